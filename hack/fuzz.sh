#!/usr/bin/env bash
# Runs every Go fuzz target of the module (every `func FuzzXxx(f *testing.F)`
# in a _test.go file outside hack/ and bin/) for FUZZ_TIME each, one after
# the other, and prints what ran and what it found. The seed corpora of the
# same targets run in every `go test`; this explores beyond them.
#
#   FUZZ_TIME   how long each target runs (go test -fuzztime), default 30s
#   FUZZ_MATCH  extended regexp over "<package dir> <target>", default all
#   FUZZ_OUT    directory for the per-target logs, default bin/fuzz
#
# A failing input is written by `go test` to the package's
# testdata/fuzz/<target>/ directory, where it becomes part of the seed
# corpus: commit it with the fix. Exits non-zero when any target failed.
set -euo pipefail

FUZZ_TIME=${FUZZ_TIME:-30s}
FUZZ_MATCH=${FUZZ_MATCH:-.}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
FUZZ_OUT=${FUZZ_OUT:-bin/fuzz}
mkdir -p "$FUZZ_OUT"

mapfile -t targets < <(
	grep -rlE --include='*_test.go' --exclude-dir=hack --exclude-dir=bin --exclude-dir=.git \
		'^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | sort |
		while read -r file; do
			dir=$(dirname "$file")
			grep -oE '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' "$file" |
				sed -E "s|^func (Fuzz[A-Za-z0-9_]*).*|${dir} \1|"
		done | grep -E -- "$FUZZ_MATCH" || true
)
if [ ${#targets[@]} -eq 0 ]; then
	echo "no fuzz target matches FUZZ_MATCH=$FUZZ_MATCH" >&2
	exit 1
fi

echo "Fuzzing ${#targets[@]} targets for ${FUZZ_TIME} each; logs in ${FUZZ_OUT}/"
summary=()
failed=0
for entry in "${targets[@]}"; do
	dir=${entry% *}
	name=${entry#* }
	log="$FUZZ_OUT/$(echo "${dir#./}" | tr / _)_${name}.log"
	start=$(date +%s)
	if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZ_TIME" "$dir" >"$log" 2>&1; then
		result=ok
	else
		result=FAIL
		failed=$((failed + 1))
	fi
	took=$(($(date +%s) - start))
	# The last progress line, "fuzz: elapsed: 30s, execs: 123 (4/sec), new
	# interesting: 5 (total: 20)", without the final (stopped) rate.
	progress=$(grep -E '^fuzz: elapsed' "$log" | tail -n 1 | sed -E 's/^fuzz: elapsed: [^,]*, //; s/ \([0-9]+\/sec\)//' || true)
	found=$(grep -oE 'Failing input written to [^ ]+' "$log" | sed -E 's/Failing input written to //' | head -n 1 || true)
	line=$(printf '%-4s %-34s %-26s %4ss  %s' "$result" "${dir#./}" "$name" "$took" "${progress:-no progress line (see log)}")
	if [ -n "$found" ]; then
		line="$line  failing input: $dir/$found"
	fi
	echo "$line"
	summary+=("$line")
done

echo
echo "Summary (${#targets[@]} targets, ${FUZZ_TIME} each, ${failed} failed):"
printf '%s\n' "${summary[@]}"
[ "$failed" -eq 0 ]
