#!/usr/bin/env bash
# Fuzz each PACKAGE:TARGET for DURATION: scripts/fuzz.sh DURATION PACKAGE:TARGET...
#
# A failing input the fuzzer finds is written to PACKAGE/testdata/fuzz/TARGET/
# and fails the run. Go's fuzzing engine can also stop with an error and no
# failing input when a worker is starved of CPU at the -fuzztime deadline
# (golang/go#51484, golang/go#56238). That prints the engine's output and runs
# the target once more; only the second run's result counts then.
set -u
GO=${GO:-go}
duration=$1
shift
for t in "$@"; do
	pkg=${t%%:*}
	fn=${t##*:}
	dir=$pkg/testdata/fuzz/$fn
	out=$(mktemp)
	before=$(ls "$dir" 2>/dev/null | sort)
	if $GO test -run '^$' -fuzz "^$fn\$" -fuzztime "$duration" "$pkg" >"$out" 2>&1; then
		echo "fuzz: $fn ok"
		rm -f "$out"
		continue
	fi
	cat "$out"
	after=$(ls "$dir" 2>/dev/null | sort)
	found=$(comm -13 <(echo "$before") <(echo "$after"))
	if [ -n "$found" ] || grep -q 'Failing input written' "$out"; then
		echo "fuzz: $fn failed on an input it wrote to $dir: $found"
		rm -f "$out"
		exit 1
	fi
	rm -f "$out"
	echo "fuzz: $fn: the fuzzing engine stopped with an error and no failing input; running it once more"
	if ! $GO test -run '^$' -fuzz "^$fn\$" -fuzztime "$duration" "$pkg"; then
		echo "fuzz: $fn failed"
		exit 1
	fi
	echo "fuzz: $fn ok (second run)"
done
