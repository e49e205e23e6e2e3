# bench/path.png from bench/path.dat (written by bench/pathbench.py): the
# latency distribution of every contender in each PATH case.  x: latency
# in ms, log scale; y: the fraction answered within it, on a scale of
# nines (-log10(1 - fraction)), so that the tail shows; a curve that stops
# short of the top lost queries or had them fail (SERVFAIL): only right
# answers count.  Run in bench/ as:
# gnuplot -e "title=''" pathplot.gp
if (!exists("title")) title = ''

array cases[5] = ["no loss, upstream Nagle on (stock unbound)", \
                  "no loss, upstream TCP\\_NODELAY", "1% loss each way", \
                  "3% loss each way", "first upstream blackholed"]
array names[6] = ["plain UDP to the upstream (floor)", "dnsfwd", "stubby", \
                  "unbound (forwarder)", "dnsdist", "knot-resolver"]
array colors[6] = ["#000000", "#cc3311", "#0077bb", "#33bbee", "#009988", "#ee7733"]
array widths[6] = [1.5, 2.5, 1.5, 1.5, 1.5, 1.5]

set terminal pngcairo size 1500,1000 font "DejaVu Sans,10"
set output 'path.png'
set logscale x
set xrange [25:3000]
set xtics (30, 40, 50, 70, 100, 200, 300, 500, 1000, 2000)
set yrange [0:4.2]
set ytics ("0" 0, "50%%" 0.30103, "90%%" 1, "99%%" 2, "99.9%%" 3, "99.99%%" 4)
set grid xtics ytics
set xlabel "latency (ms, log scale)"
set ylabel "answered within"
unset key

set multiplot layout 2,3 title title."Two DoT upstreams, each over its own emulated 30 ms path (0-10 ms jitter), 200 q/s of unique names"
do for [c=1:5] {
    set title cases[c]
    plot for [j=1:6] 'path.dat' index (c-1)*6+(j-1) using 1:2 with steps \
        lw widths[j] lc rgb colors[j] title names[j]
}
# The sixth place holds the legend alone.
unset title
unset border
unset tics
unset grid
unset xlabel
unset ylabel
unset logscale x
set xrange [0:1]
set yrange [0:1]
set key center center font ",11" noenhanced spacing 1.5 samplen 4
plot for [j=1:6] NaN with lines lw widths[j] lc rgb colors[j] title names[j]
unset multiplot
