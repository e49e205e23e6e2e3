# bench/path.png from bench/path.dat (written by bench/pathbench.py): the
# latency distribution of every contender in each PATH case.  x: latency
# in ms, log scale; y: the fraction answered within it, on a scale of
# nines (-log10(1 - fraction)), so that the tail shows; a curve that stops
# short of the top lost queries or had them fail (SERVFAIL): only right
# answers count.  pathbench.py runs it in bench/ (after a run, or with
# --rewrite from path.json) and sets, from its own tables so that they
# never disagree with path.dat: title (the plot's), cases and names
# (arrays: the titles of path.dat's cases and contenders, in its order).
# One colour and width per contender, the floor first and dnsfwd second.

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

set multiplot layout 2,3 title title noenhanced
do for [c=1:|cases|] {
    set title cases[c] noenhanced
    plot for [j=1:|names|] 'path.dat' index (c-1)*|names|+(j-1) using 1:2 \
        with steps lw widths[j] lc rgb colors[j] title names[j]
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
plot for [j=1:|names|] NaN with lines lw widths[j] lc rgb colors[j] title names[j]
unset multiplot
