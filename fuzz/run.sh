#!/bin/bash
# Runs the libFuzzer targets for `make fuzz` and `make fuzz-smoke`.
#
#     bash fuzz/run.sh SECONDS TARGET...
#
# Each fuzz/TARGET-fuzz runs for SECONDS (after its seed inputs), FUZZ_JOBS
# at a time (2 by default, one per core), on three corpora: a working one
# under build/fuzz/TARGET/corpus, the only one it writes to, then the seed
# corpus fuzz/corpus/TARGET and the crash regressions fuzz/regress/TARGET,
# which it only reads, so every seed and every past crash is replayed
# first.  A crash, leak, timeout (5 s per input) or RSS above 1 GiB fails
# the target, and its input is kept in build/fuzz/TARGET/ (crash-*,
# leak-*, timeout-*, oom-*): to keep it as a regression, copy it into
# fuzz/regress/TARGET/.  Prints a line per target and closes with
# "fuzz: N passed, N failed".
set -u
cd "$(dirname "$0")/.."

secs=${1:?usage: run.sh SECONDS TARGET...}
shift
jobs=${FUZZ_JOBS:-2}
[ "$secs" -ge 1 ] 2>/dev/null || secs=1

# The largest input worth trying, per target.
maxlen() {
	case $1 in
	options)	echo 2048 ;;
	upstream)	echo 65536 ;;
	*)		echo 16384 ;;
	esac
}

run_one() {
	local t=$1 dir=build/fuzz/$1 rc
	local -a corpora=("$dir/corpus" "fuzz/corpus/$t")

	mkdir -p "$dir/corpus"
	rm -f "$dir/result"
	[ -d "fuzz/regress/$t" ] && corpora+=("fuzz/regress/$t")
	"./fuzz/$t-fuzz" -max_total_time="$secs" -timeout=5 \
	    -rss_limit_mb=1024 -max_len="$(maxlen "$t")" \
	    -artifact_prefix="$dir/" -print_final_stats=1 \
	    "${corpora[@]}" >"$dir/log" 2>&1
	rc=$?
	echo "$rc" >"$dir/result"
}

summary() {
	local t=$1 dir=build/fuzz/$1 rc runs eps cov art why

	rc=$(cat "$dir/result" 2>/dev/null || echo 1)
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log")
	cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1)
	if [ "$rc" = 0 ]; then
		echo "ok $t: ${runs:-0} runs, ${eps:-0} exec/s, ${cov:-cov: ?}"
		return 0
	fi
	art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$dir/log" |
	    tail -1)
	why=$(grep -m1 -E \
	    'invariant failed|runtime error|^==[0-9]+==ERROR|^SUMMARY' \
	    "$dir/log")
	echo "FAIL $t: exit $rc: ${why:-see $dir/log}${art:+ (input: $art)}"
	# The stack, for whoever reads the CI log.
	grep -E '^    #[0-9]+ ' "$dir/log" | head -12 | sed 's/^/    /'
	return 1
}

for t in "$@"; do
	if [ ! -x "fuzz/$t-fuzz" ]; then
		echo "fuzz/$t-fuzz is not built" >&2
		exit 2
	fi
done
running=0
for t in "$@"; do
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
	run_one "$t" &
	running=$((running + 1))
done
wait

passed=0
failed=0
for t in "$@"; do
	if summary "$t"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
	fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
