// Command demo runs Herald end to end on this machine, as `make demo` does:
// a local control plane, the manager and the dispatcher as processes, a
// sample receiver that verifies signatures, the sample resources, events
// published with a ServiceAccount token, and `kubectl get webhooks`.
//
// With DEMO_KEEP=1 everything keeps running after the tour until
// interrupted, and three lines tell scripts where to connect:
//
//	KUBECONFIG=<path>
//	HERALD_INGEST_URL=<base url, https>
//	HERALD_INGEST_CA=<path to the PEM CA bundle that verifies it>
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/test/e2e"
)

const namespace = "demo"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

func run(ctx context.Context) error {
	start := time.Now()
	dir, err := os.MkdirTemp("", "herald-demo-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()

	h, err := e2e.Start(ctx, e2e.Options{Dir: dir, Progress: say})
	if err != nil {
		return err
	}
	defer func() {
		say("tearing down")
		h.Stop()
	}()

	rcv, err := e2e.StartReceiver("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer rcv.Close()
	say("sample receiver listening on %s (it verifies every signature)", rcv.URL)

	if _, err := h.Kubectl(ctx, "create", "namespace", namespace); err != nil {
		return err
	}
	samples, err := h.SamplesWithReceiver(ctx, rcv.URL)
	if err != nil {
		return err
	}
	say("applying config/samples in namespace %q", namespace)
	out, err := h.ApplyYAML(ctx, namespace, samples)
	if err != nil {
		return err
	}
	fmt.Print(indent(out))
	if _, err := h.Kubectl(ctx, "wait", "-n", namespace, "--for=condition=Ready", "webhookendpoints,subscriptions", "--all", "--timeout=60s"); err != nil {
		return err
	}
	secret, err := h.SigningSecret(ctx, namespace, "orders-receiver")
	if err != nil {
		return err
	}
	if err := rcv.SetSecrets(secret); err != nil {
		return err
	}
	say("receiver configured with the signing secret from Secret orders-receiver-herald")

	if _, err := h.Kubectl(ctx, "wait", "-n", namespace, "--for=create", "configmap/"+heraldv1.CABundleConfigMapName, "--timeout=30s"); err != nil {
		return err
	}
	say("ingest is HTTPS; publishers in %q verify it with ca.crt of ConfigMap %s, which the manager keeps there", namespace, heraldv1.CABundleConfigMapName)

	token, err := h.PublisherToken(ctx, namespace, "shop")
	if err != nil {
		return err
	}
	say("ServiceAccount demo/shop may publish (RoleBinding to ClusterRole herald-publisher); token from `kubectl create token shop --audience herald.dev`")

	var events []e2e.Event
	wantAtReceiver := 0
	for i := 1; i <= 12; i++ {
		region, total := "eu", 50*i
		if i%3 == 0 {
			region = "us"
		}
		if region == "eu" && total >= 100 {
			wantAtReceiver++
		}
		events = append(events, e2e.Event{
			ID: fmt.Sprintf("order-%d", i), Source: "/shop/checkout", Type: "order.created",
			Subject: fmt.Sprintf("%s/orders/%d", region, i), Data: map[string]any{"orderId": i, "total": total},
		})
	}
	code, body, err := h.Publish(ctx, namespace, token, events)
	if err != nil {
		return err
	}
	if code != 202 {
		return fmt.Errorf("publish answered %d: %s", code, body)
	}
	say("published %d order.created events over HTTPS: 202 Accepted", len(events))
	say("the filter of Subscription eu-large-orders lets %d of them through to the receiver; all go to legacy-crm, which refuses connections", wantAtReceiver)

	waitCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for rcv.Unique() < wantAtReceiver {
		select {
		case <-waitCtx.Done():
			return fmt.Errorf("receiver got %d of %d deliveries; dispatcher log: %s", rcv.Unique(), wantAtReceiver, h.Dispatcher.LogPath)
		case <-time.After(200 * time.Millisecond):
		}
	}
	unique, total, rejected := rcv.Stats()
	say("receiver verified %d deliveries (%d requests, %d rejected)", unique, total, rejected)

	say("waiting for delivery health in status")
	if _, err := h.Kubectl(waitCtx, "wait", "-n", namespace, "--for=jsonpath={.status.delivery.delivered}="+fmt.Sprint(wantAtReceiver), "webhookendpoint/orders-receiver", "--timeout=30s"); err != nil {
		return err
	}
	if _, err := h.Kubectl(waitCtx, "wait", "-n", namespace, "--for=condition=DeliveryHealthy=False", "webhookendpoint/legacy-crm", "--timeout=45s"); err != nil {
		return err
	}
	out, err = h.Kubectl(ctx, "get", "webhooks", "-n", namespace, "-o", "wide")
	if err != nil {
		return err
	}
	say("kubectl get webhooks -n %s -o wide", namespace)
	fmt.Print(out)
	out, err = h.Kubectl(ctx, "get", "whep", "legacy-crm", "-n", namespace, "-o", `jsonpath={range .status.conditions[?(@.type=="DeliveryHealthy")]}DeliveryHealthy={.status} reason={.reason}: {.message}{"\n"}{end}`)
	if err != nil {
		return err
	}
	fmt.Print(indent(out))
	// Why did legacy-crm fail? The delivery log answers, through the
	// kube-apiserver's aggregator: each delivery, its phase and attempts.
	out, err = h.Kubectl(ctx, "get", "deliveries", "-n", namespace, "-l", "herald.dev/endpoint=legacy-crm")
	if err != nil {
		return err
	}
	say("kubectl get deliveries -n %s -l herald.dev/endpoint=legacy-crm", namespace)
	fmt.Print(out)
	say("tour finished in %s", time.Since(start).Round(time.Second))

	if os.Getenv("DEMO_KEEP") == "1" {
		fmt.Printf("KUBECONFIG=%s\n", h.Kubeconfig)
		fmt.Printf("HERALD_INGEST_URL=%s\n", h.IngestURL)
		fmt.Printf("HERALD_INGEST_CA=%s\n", h.IngestCA)
		say("DEMO_KEEP=1: Herald keeps running; publish to $HERALD_INGEST_URL/v1/namespaces/%s/events "+
			"with a token from `kubectl create token` and `curl --cacert $HERALD_INGEST_CA`; Ctrl-C to stop", namespace)
		<-ctx.Done()
	}
	return nil
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
