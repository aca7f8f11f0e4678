// Command bench runs Herald's benchmark harness (test/bench) against a local
// control plane, as `make bench` does, prints the figures against the
// performance targets and writes them as JSON and Markdown.
//
// Environment:
//
//	BENCH_SCENARIOS=fanout1,fanout10,isolation,sigkill,endpoints1000  a subset (the baseline always runs)
//	BENCH_QUICK=1                                                      a short smoke run
//	BENCH_COMPARE=<git ref>                                            with BENCH_SCENARIOS=compare: that ref's dispatcher against the working tree's
//	BENCH_COMPARE_ROUNDS=<n>                                           alternating rounds of the compare scenario (default 3)
//
// It lives under test/bench rather than hack/ because it is one piece with
// the harness package it drives: `go test ./test/bench/...` and `go vet`
// cover both, and the harness is not a tool the product's build uses.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/herald-dev/herald/test/bench"
)

func main() {
	out := flag.String("out", "bench-results", "Directory for the results (JSON, Markdown, profiles).")
	scenarios := flag.String("scenarios", os.Getenv("BENCH_SCENARIOS"), "Comma-separated scenarios (default all: "+strings.Join(bench.AllScenarios, ",")+").")
	quick := flag.Bool("quick", os.Getenv("BENCH_QUICK") == "1", "Short smoke run.")
	keep := flag.Bool("keep", false, "Keep the scratch directory (logs, JetStream store).")
	compare := flag.String("compare", os.Getenv("BENCH_COMPARE"), "Git ref whose dispatcher the compare scenario runs against the working tree's.")
	rounds := flag.Int("compare-rounds", envInt("BENCH_COMPARE_ROUNDS"), "Alternating base/head rounds of the compare scenario (0: the default, 3).")
	timeout := flag.Duration("timeout", 40*time.Minute, "Stop the whole run after this long.")
	render := flag.String("render", "", "Only print the Markdown tables of an existing results JSON file.")
	flag.Parse()
	if *render != "" {
		if err := renderMarkdown(*render); err != nil {
			fmt.Fprintf(os.Stderr, "render: %v\n", err)
			os.Exit(1)
		}
		return
	}
	// The harness's own Kubernetes clients have nothing to say; the
	// processes under test log to files in the scratch directory.
	ctrllog.SetLogger(logr.Discard())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, *out, *scenarios, *quick, *keep, *compare, *rounds); err != nil {
		fmt.Fprintf(os.Stderr, "bench failed: %v\n", err)
		os.Exit(1)
	}
}

// envInt is the integer in the environment variable name, 0 when unset. A
// value that is not an integer stops the run with its name.
func envInt(name string) int {
	v := os.Getenv(name)
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "%s=%q: want a whole number\n", name, v)
		os.Exit(2)
	}
	return n
}

func renderMarkdown(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res bench.Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Print(res.Markdown())
	return nil
}

func run(ctx context.Context, out, scenarios string, quick, keep bool, compare string, rounds int) error {
	var list []string
	for _, s := range strings.Split(scenarios, ",") {
		if s = strings.TrimSpace(s); s != "" {
			list = append(list, s)
		}
	}
	began := time.Now()
	say := func(format string, args ...any) {
		fmt.Printf("[%6.1fs] "+format+"\n", append([]any{time.Since(began).Seconds()}, args...)...)
	}
	res, err := bench.Run(ctx, bench.Config{Scenarios: list, Quick: quick, OutDir: out, Progress: say, KeepDir: keep, CompareRef: compare, CompareRounds: rounds})
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, name := range []string{"bench-" + stamp + ".json", "latest.json"} {
		if err := os.WriteFile(filepath.Join(out, name), append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	md := res.Markdown()
	if err := os.WriteFile(filepath.Join(out, "latest.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(res.TargetTable())
	fmt.Printf("\nresults: %s (JSON), %s (tables); profiles in %s\n",
		filepath.Join(out, "latest.json"), filepath.Join(out, "latest.md"), out)
	if len(res.Errors) > 0 {
		return fmt.Errorf("%d scenario(s) failed: %s", len(res.Errors), strings.Join(res.Errors, "; "))
	}
	return nil
}
