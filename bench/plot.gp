# bench/results.png from bench/results.dat (written by bench/bench.py):
# q/s and contender CPU seconds per 100k queries, MISS and HIT, per contender.
# Run in bench/ as: gnuplot -e "title=''" plot.gp
if (!exists("title")) title = ''

set terminal pngcairo size 1200,900 font "DejaVu Sans,10"
set output 'results.png'
set datafile separator whitespace
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics nomirror noenhanced font ",9"
set ytics nomirror
set format y "%.0f"
set yrange [0:*]
set offsets 0, 0, graph 0.12, 0
set bmargin 4

set multiplot layout 2,1 title title."dnsfwd and peers over DNS-over-TLS to one unbound (contender on core 0, load and upstream on core 1)"

set title "Answered queries per second (higher is better)"
set ylabel "q/s"
plot 'results.dat' using 2:xtic(1) title 'MISS (unique names)' lc rgb '#4477aa', \
     '' using 3 title 'HIT (100 names)' lc rgb '#ee7733', \
     '' using ($0-0.2):2:(sprintf("%.0fk", $2/1000)) with labels offset 0,0.7 font ",8" notitle, \
     '' using ($0+0.2):3:(sprintf("%.0fk", $3/1000)) with labels offset 0,0.7 font ",8" notitle

set title "Contender CPU seconds per 100k queries (lower is better)"
set ylabel "CPU s / 100k queries"
set format y "%.1f"
plot 'results.dat' using 4:xtic(1) title 'MISS (unique names)' lc rgb '#4477aa', \
     '' using 5 title 'HIT (100 names)' lc rgb '#ee7733', \
     '' using ($0-0.2):4:(sprintf("%.2f", $4)) with labels offset 0,0.7 font ",8" notitle, \
     '' using ($0+0.2):5:(sprintf("%.2f", $5)) with labels offset 0,0.7 font ",8" notitle

unset multiplot
