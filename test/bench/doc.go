// Package bench is Herald's benchmark harness. It runs Herald the way the
// end-to-end tests do (test/e2e: etcd and kube-apiserver as processes, the
// manager and the dispatcher as processes) and measures the dispatcher from
// outside, under an open-loop load:
//
//   - a Publisher posts CloudEvents batches to ingest with a ServiceAccount
//     token at a constant rate, each event due at its scheduled time
//     whatever happened to the ones before, so latency is measured from the
//     schedule and a lagging publisher or ingest shows in it;
//   - a Sink receives every delivery on loopback and verifies its Standard
//     Webhooks signature with dispatcher/signature;
//   - a Ledger accounts for every (event, endpoint) pair: published =
//     delivered + missing, duplicates counted, and a run it cannot balance
//     is reported void;
//   - the dispatcher's CPU time and peak RSS come from /proc/<pid>.
//
// A plain net/http client posting the same signed payloads to the same sink
// gives the loopback ceiling every run is compared with, because absolute
// figures on shared 2-core machines are not comparable from one run to the
// next but ratios are.
//
// The scenarios are in scenarios.go; cmd/bench is the command `make bench`
// runs. Micro-benchmarks of the fan-out path live in micro_test.go, beside
// those of dispatcher/signature and dispatcher/router.
package bench
