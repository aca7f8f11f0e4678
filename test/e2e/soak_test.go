package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// soakDuration is how long TestChaosSoak drives faults: HERALD_SOAK (a Go
// duration) or, inside `make test`, a short default. `make soak` runs it
// for ten minutes.
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("HERALD_SOAK")
	if v == "" {
		return 20 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("HERALD_SOAK=%q is not a positive duration", v)
	}
	return d
}

// chaosAction is one fault the soak driver injects.
type chaosAction struct {
	name string
	do   func(ctx context.Context) error
}

// TestChaosSoak publishes at a steady, open-loop rate while a driver picks
// faults at random: SIGKILL and restart of the dispatcher (not waiting for
// readiness), a manager restart, endpoint and Subscription edits, signing
// key rotation, a user Secret (a header value) deleted and recreated, and a
// suspend/resume of the endpoint, and a kube-apiserver restart (on a
// control plane of its own, with the manager and the dispatcher on
// least-privilege roles). It ends with the ledger: every event
// answered 202 delivered (the receiver is healthy, so nothing may be
// dead-lettered), duplicates counted.
func TestChaosSoak(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	duration := soakDuration(t)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	t.Logf("soak for %s, seed %d", duration, seed)

	// A Herald of its own, whose API server the soak can restart. The
	// helpers below use the package's herald: point it here meanwhile.
	fh := startFaultHerald(t, herald.Bins)
	shared := herald
	herald = fh.Herald
	defer func() { herald = shared }()

	ns := "e2e-soak"
	const userSecret = `apiVersion: v1
kind: Secret
metadata: {name: soak-token}
stringData: {value: "Bearer soak"}
`
	// The header's Secret exists before the endpoint that references it.
	createNamespace(t, ns)
	out, err := herald.ApplyYAML(ctx, ns, userSecret)
	g.Expect(err).NotTo(HaveOccurred(), out)
	rcv, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer rcv.Close()
	setUpEndpoint(t, ns, "sink", rcv, "  headers: [{name: Authorization, valueFrom: {name: soak-token}}]")
	token, err := herald.PublisherToken(ctx, ns, "publisher")
	g.Expect(err).NotTo(HaveOccurred())

	kubectl := func(args ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			out, err := herald.Kubectl(ctx, args...)
			if err != nil {
				return fmt.Errorf("%v: %w: %s", args, err, out)
			}
			return nil
		}
	}
	step := 0
	actions := []chaosAction{
		{"kill and restart the dispatcher", func(context.Context) error {
			herald.Dispatcher.Kill()
			time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
			p, err := herald.StartProcess("dispatcher", herald.Bins.Dispatcher, herald.dispatcherArgs...)
			if err == nil {
				herald.Dispatcher = p
			}
			return err
		}},
		{"restart the manager", func(ctx context.Context) error {
			herald.Manager.Kill()
			return fh.StartManager(ctx) // with its least-privilege kubeconfig
		}},
		{"edit the endpoint", func(ctx context.Context) error {
			return kubectl("patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p",
				fmt.Sprintf(`{"spec":{"timeout":"%ds"}}`, 5+rng.IntN(20)))(ctx)
		}},
		{"edit the Subscription", func(ctx context.Context) error {
			types := `["*"]`
			if rng.IntN(2) == 0 {
				types = `["tick","*"]`
			}
			return kubectl("patch", "-n", ns, "subscription/sink-all", "--type=merge", "-p", `{"spec":{"types":`+types+`}}`)(ctx)
		}},
		{"rotate the signing key", func(ctx context.Context) error {
			step++
			return kubectl("annotate", "--overwrite", "-n", ns, "webhookendpoint/sink", fmt.Sprintf("herald.dev/rotate-signing-key=soak-%d", step))(ctx)
		}},
		{"delete and recreate the header's Secret", func(ctx context.Context) error {
			if err := kubectl("delete", "-n", ns, "secret/soak-token")(ctx); err != nil {
				return err
			}
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
			out, err := herald.ApplyYAML(ctx, ns, userSecret)
			if err != nil {
				return fmt.Errorf("recreate Secret: %w: %s", err, out)
			}
			return nil
		}},
		{"restart kube-apiserver", func(ctx context.Context) error {
			if err := fh.StopAPIServer(); err != nil {
				return err
			}
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
			return fh.StartAPIServer(ctx)
		}},
		{"suspend and resume the endpoint", func(ctx context.Context) error {
			if err := kubectl("patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p", `{"spec":{"suspend":true}}`)(ctx); err != nil {
				return err
			}
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			return kubectl("patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p", `{"spec":{"suspend":false}}`)(ctx)
		}},
	}

	pub := startSteadyPublisher(t, ns, token, "/soak", 20*time.Millisecond, int(duration/(20*time.Millisecond)))
	counts := map[string]int{}
	var mu sync.Mutex
	deadline := time.Now().Add(duration)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		a := actions[rng.IntN(len(actions))]
		actCtx, cancel := context.WithTimeout(ctx, time.Minute)
		err := a.do(actCtx)
		cancel()
		g.Expect(err).NotTo(HaveOccurred(), "chaos action %q", a.name)
		mu.Lock()
		counts[a.name]++
		mu.Unlock()
	}
	acked := pub.finish()
	// Leave the system whole: the dispatcher ready, the endpoint resumed.
	g.Expect(waitReady(ctx, herald.healthURL, herald.Dispatcher)).To(Succeed())
	g.Expect(kubectl("patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p", `{"spec":{"suspend":false}}`)(ctx)).To(Succeed())

	pub.mu.Lock()
	attempted := pub.attempted
	pub.mu.Unlock()
	t.Logf("ledger: %d publishes, %d answered 202; faults injected: %v", attempted, len(acked), counts)
	g.Expect(acked).NotTo(BeEmpty())
	expectAllDelivered(t, rcv, ns, "/soak", acked, 3*time.Minute)
}
