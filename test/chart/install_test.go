package chart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/herald-dev/herald/test/e2e"
)

// TestChartInstallUpgradeUninstall installs the chart into the local control
// plane as the README says (release herald, namespace herald-system; from
// the chart directory, since no registry is reachable here), upgrades it
// with a changed value and uninstalls it.
//
// The control plane has no kubelet, so the manager Deployment never gets a
// pod. The test runs the manager binary as a process instead, with the
// arguments the chart rendered into that Deployment and with a token of the
// chart's ServiceAccount, so the chart's RBAC is what it works with. What
// differs from a cluster: the image, the probes and the pod security
// context are not exercised; the manager runs with --leader-elect=false
// (outside a pod it cannot find its namespace for the lease) and with
// loopback ports for metrics and probes; and the dispatcher the manager
// creates is only seen as objects, not as a running pod.
func TestChartInstallUpgradeUninstall(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	bins, err := e2e.Build(ctx, root, t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())

	helm(t, "install", releaseName, chartDir, "--namespace", releaseNamespace, "--create-namespace")
	// A failure below must not leave the release behind: its cluster-scoped
	// objects, owned by helm, would conflict with the other tests' applies.
	t.Cleanup(func() {
		if out, _ := run(context.Background(), nil, helmBin, "list", "--namespace", releaseNamespace, "-q",
			"--kubeconfig", cluster.kubeconfig); strings.TrimSpace(out) != "" {
			_, _ = run(context.Background(), nil, helmBin, "uninstall", releaseName, "--namespace", releaseNamespace,
				"--wait", "--kubeconfig", cluster.kubeconfig)
		}
	})
	g.Expect(kubectl(t, nil, "get", "crd", "webhookendpoints.herald.dev", "subscriptions.herald.dev", "-o", "name")).
		To(ContainSubstring("webhookendpoints.herald.dev"))
	// The dispatcher's RBAC ships with the release; the manager writes none.
	kubectl(t, nil, "get", "clusterrole/herald-dispatcher", "clusterrolebinding/herald-dispatcher",
		"clusterrolebinding/herald-dispatcher-auth-delegator")
	kubectl(t, nil, "get", "role/herald-dispatcher", "rolebinding/herald-dispatcher", "-n", releaseNamespace)
	kubectl(t, nil, "get", "rolebinding/herald-dispatcher-auth-reader", "-n", "kube-system")

	manager := startChartManager(t, bins.Manager)
	waitFor(t, "the dispatcher Deployment created by the manager", func() (bool, string) {
		out, err := kubectlErr(nil, "get", "deployment", "herald-dispatcher", "-n", releaseNamespace,
			"-o", "jsonpath={.spec.template.spec.containers[0].args}")
		return err == nil && strings.Contains(out, "--log-level=info"), out
	}, manager)
	for _, obj := range []string{"service/herald-dispatcher", "serviceaccount/herald-dispatcher", "persistentvolumeclaim/herald-dispatcher"} {
		kubectl(t, nil, "get", obj, "-n", releaseNamespace)
	}

	// Upgrade with a changed value: the manager's Deployment gets the new
	// flag, and the manager restarted with it re-renders the dispatcher.
	helm(t, "upgrade", releaseName, chartDir, "--namespace", releaseNamespace, "--reuse-values",
		"--set", "dispatcher.logLevel=debug")
	g.Expect(manager.Stop(20 * time.Second)).To(Succeed())
	manager = startChartManager(t, bins.Manager)
	waitFor(t, "the dispatcher re-rendered with --log-level=debug", func() (bool, string) {
		out, err := kubectlErr(nil, "get", "deployment", "herald-dispatcher", "-n", releaseNamespace,
			"-o", "jsonpath={.spec.template.spec.containers[0].args}")
		return err == nil && strings.Contains(out, "--log-level=debug"), out
	}, manager)
	g.Expect(helm(t, "history", releaseName, "--namespace", releaseNamespace)).To(ContainSubstring("Upgrade complete"))
	g.Expect(manager.Stop(20 * time.Second)).To(Succeed())

	// Uninstall: everything the release created, the dispatcher's RBAC
	// included, is gone except the CRDs (crds.keep). The dispatcher's
	// ServiceAccount, Service, PVC and Deployment are the manager's, not the
	// release's: they stay, as with `kubectl delete -k config/default`,
	// and the README says how to remove them (the PVC holds undelivered
	// events).
	helm(t, "uninstall", releaseName, "--namespace", releaseNamespace, "--wait")
	for _, gone := range []string{"deployment/herald-manager", "serviceaccount/herald-manager", "service/herald-manager-metrics",
		"networkpolicy/herald-allow-metrics-traffic", "role/herald-leader-election", "role/herald-dispatcher",
		"rolebinding/herald-dispatcher"} {
		_, err := kubectlErr(nil, "get", gone, "-n", releaseNamespace)
		g.Expect(err).To(MatchError(ContainSubstring("NotFound")), "%s is left after uninstall", gone)
	}
	_, err = kubectlErr(nil, "get", "rolebinding/herald-dispatcher-auth-reader", "-n", "kube-system")
	g.Expect(err).To(MatchError(ContainSubstring("NotFound")), "the kube-system RoleBinding is left after uninstall")
	for _, gone := range []string{"clusterrole/herald-manager", "clusterrolebinding/herald-manager", "clusterrole/herald-editor",
		"clusterrole/herald-dispatcher", "clusterrolebinding/herald-dispatcher", "clusterrolebinding/herald-dispatcher-auth-delegator",
		"validatingadmissionpolicy/herald-webhookendpoint-secret-references"} {
		_, err := kubectlErr(nil, "get", gone)
		g.Expect(err).To(MatchError(ContainSubstring("NotFound")), "%s is left after uninstall", gone)
	}
	kubectl(t, nil, "get", "crd", "webhookendpoints.herald.dev", "subscriptions.herald.dev")
	g.Expect(helm(t, "list", "--all-namespaces", "-q")).To(BeEmpty())
}

// startChartManager runs the manager binary with the arguments of the
// installed manager Deployment, authenticated as its ServiceAccount.
func startChartManager(t *testing.T, managerBin string) *e2e.Process {
	t.Helper()
	args := strings.Fields(strings.Trim(kubectl(t, nil, "get", "deployment", "herald-manager", "-n", releaseNamespace,
		"-o", `jsonpath={range .spec.template.spec.containers[0].args[*]}{@}{" "}{end}`), " "))
	serviceAccount := kubectl(t, nil, "get", "deployment", "herald-manager", "-n", releaseNamespace,
		"-o", "jsonpath={.spec.template.spec.serviceAccountName}")
	if len(args) == 0 || serviceAccount == "" {
		t.Fatalf("manager Deployment has args %q and ServiceAccount %q", args, serviceAccount)
	}
	token := strings.TrimSpace(kubectl(t, nil, "create", "token", serviceAccount, "-n", releaseNamespace, "--duration=1h"))
	kubeconfig := serviceAccountKubeconfig(t, token)

	health, err := e2e.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	overrides := map[string]string{
		"leader-elect":              "false",
		"health-probe-bind-address": fmt.Sprintf("127.0.0.1:%d", health),
		"metrics-bind-address":      "0",
	}
	var final []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, overridden := overrides[name]; !overridden {
			final = append(final, a)
		}
	}
	for name, value := range overrides {
		final = append(final, "--"+name+"="+value)
	}
	final = append(final, "--kubeconfig="+kubeconfig)

	env := &e2e.Env{Dir: cluster.dir, Kubeconfig: kubeconfig}
	p, err := env.StartProcess("chart-manager", managerBin, final...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(20 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e2e.WaitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", health), p); err != nil {
		t.Fatalf("manager from the chart never became ready: %v", err)
	}
	return p
}

// serviceAccountKubeconfig writes a kubeconfig for the admin's API server
// that authenticates with token alone.
func serviceAccountKubeconfig(t *testing.T, token string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(cluster.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name].ClientCertificateData = nil
		cfg.AuthInfos[name].ClientKeyData = nil
		cfg.AuthInfos[name].Token = token
	}
	path := filepath.Join(t.TempDir(), "manager-kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitFor polls cond for up to a minute, failing with the manager's log.
func waitFor(t *testing.T, what string, cond func() (bool, string), manager *e2e.Process) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		if manager.Exited() {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last: %s); manager log:\n%s", what, last, manager.Logs())
}
