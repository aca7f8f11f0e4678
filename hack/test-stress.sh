#!/usr/bin/env bash
# Runs the whole test suite STRESS_RUNS times back to back (default 5), the
# way `make test` runs it (race detector, envtest) but without the
# generated-code and vet checks, and reports per test how often it failed.
# Each run's `go test -json` output is kept in STRESS_OUT (default
# bin/test-stress/<date>/, git-ignored). Exits non-zero when any run failed.
#
#   STRESS_RUNS    number of runs (default 5)
#   STRESS_PKGS    packages (default ./...)
#   GO_TEST_FLAGS  go test flags (default -race -count=1 -timeout=30m)
#   STRESS_OUT     where the JSON goes
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
runs=${STRESS_RUNS:-5}
pkgs=${STRESS_PKGS:-./...}
flags=${GO_TEST_FLAGS:--race -count=1 -timeout=30m}
out=${STRESS_OUT:-$root/bin/test-stress/$(date +%Y%m%d-%H%M%S)}

if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
  echo "STRESS_RUNS must be a positive integer, not '$runs'" >&2
  exit 2
fi
if ! command -v jq >/dev/null; then
  echo "test-stress needs jq to read the go test -json output" >&2
  exit 2
fi
if [[ -z ${KUBEBUILDER_ASSETS:-} ]]; then
  echo "KUBEBUILDER_ASSETS is not set: run \`make test-stress\`, which builds the envtest binaries into bin/k8s" >&2
  exit 2
fi

mkdir -p "$out"
cd "$root"
echo ">> $runs runs of go test $flags -json $pkgs; output in ${out#"$root"/}" >&2

failed_runs=0
for ((i = 1; i <= runs; i++)); do
  json=$out/run-$i.json
  start=$SECONDS
  status=0
  # shellcheck disable=SC2086 # flags and packages are word lists
  go test $flags -json $pkgs >"$json" 2>"$out/run-$i.stderr" || status=$?
  # One line per failed test (or package, for a build failure, a panic
  # outside a test or a timeout): "<package> <test>".
  jq -rR 'fromjson? | select(.Action == "fail") | "\(.Package // .ImportPath) \(.Test // "(package)")"' "$json" |
    sort -u >"$out/run-$i.failed"
  if [[ $status -ne 0 && ! -s $out/run-$i.failed ]]; then
    # go test failed without reporting a failed test or package (for
    # example it could not start): count it, with its stderr.
    echo ". (go test exited $status; see run-$i.stderr)" >"$out/run-$i.failed"
  fi
  if [[ -s $out/run-$i.failed ]]; then
    failed_runs=$((failed_runs + 1))
    echo ">> run $i/$runs: FAIL ($(wc -l <"$out/run-$i.failed") failed) in $((SECONDS - start))s" >&2
  else
    echo ">> run $i/$runs: ok in $((SECONDS - start))s" >&2
  fi
done

echo
if [[ $failed_runs -eq 0 ]]; then
  echo "total: no test failed in $runs runs"
  exit 0
fi
# Per failed test: how many runs it failed in, most often first. A parent
# test fails with its subtests; "(package)" is a failure outside any test.
module=$(go list -m)
cat "$out"/run-*.failed | sort | uniq -c | sort -k1,1nr -k2 |
  while read -r count pkg test; do
    printf '%-56s %6s failed  %s\n' "$test" "$count/$runs" "${pkg/#$module/.}"
  done
echo "total: $(cat "$out"/run-*.failed | sort -u | wc -l) tests failed; $failed_runs/$runs runs failed"
exit 1
