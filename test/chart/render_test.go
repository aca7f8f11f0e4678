package chart

import (
	"fmt"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestChartLint(t *testing.T) {
	for name, values := range map[string][]string{"defaults": defaultValues, "all features": allFeaturesValues} {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", chartDir}, values...)
			for i, a := range args {
				if strings.HasPrefix(a, "ci/") {
					args[i] = chartDir + "/" + a
				}
			}
			out := helm(t, args...)
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Fatalf("helm lint: %s", out)
			}
		})
	}
}

// TestChartValuesSchema: values.schema.json refuses what would break the
// install or put a secret into values.
func TestChartValuesSchema(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		// Credentials go into Secrets, never into values or the URL.
		{"dispatcher.nats.url=nats://user:pass@nats:4222", "/dispatcher/nats/url"},
		{"dispatcher.nats.urlSecret.name=herald-nats", "additional properties 'urlSecret' not allowed"},
		{"dispatcher.nats.credentialsSecret=herald-nats-user", "/dispatcher/nats/credentialsSecret"},
		{"dispatcher.nats.url=nats://nats:4222,dispatcher.nats.credentialsSecret=a,dispatcher.nats.nkeySecret=b",
			"/dispatcher/nats/nkeySecret"},
		{"dispatcher.networkPolicy.enabled=true", "/dispatcher/networkPolicy/cidrs"},
		{"dispatcher.ingest.namespaceBurst=-1", "/dispatcher/ingest/namespaceBurst"},
		{"dispatcher.logLevel=verbose", "/dispatcher/logLevel"},
		{"dispatcher.ports.ingest=80", "/dispatcher/ports/ingest"},
		{"image.digest=latest", "/image/digest"},
		{"dispatcher.ports.deliveryAPI=443", "/dispatcher/ports/deliveryAPI"},
		// Plain HTTP has no certificate for cert-manager to issue.
		{"dispatcher.ingest.insecureHTTP=true,dispatcher.tls.certManager.enabled=true", "/dispatcher/tls/certManager/enabled"},
		{"dispatcher.tls.certManager.enabled=true,dispatcher.tls.issuer=manager", "/dispatcher/tls/issuer"},
		{"dispatcher.tls.extraHosts={herald_dispatcher}", "/dispatcher/tls/extraHosts/0"},
		{"manager.replica=2", "additional properties 'replica' not allowed"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			_, err := run(t.Context(), nil, helmBin, "template", releaseName, chartDir, "--set", tc.set)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("--set %s: want a schema error mentioning %q, got %v", tc.set, tc.want, err)
			}
		})
	}
}

func TestChartDefaults(t *testing.T) {
	g := NewWithT(t)
	objs := objects(t, render(t))
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		// Every object carries the chart's labels; the cluster-scoped ones
		// have no namespace.
		g.Expect(o.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "Helm"), "%s %s", o.GetKind(), o.GetName())
	}
	g.Expect(kinds).To(Equal(map[string]int{
		"CustomResourceDefinition": 3, "ServiceAccount": 1, "ClusterRole": 7, "ClusterRoleBinding": 4,
		"Role": 3, "RoleBinding": 4, "Deployment": 1, "Service": 1, "NetworkPolicy": 1,
		"ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1,
	}), "optional pieces (PDB, monitoring, cert-manager) are off by default")

	for _, crd := range heraldCRDs {
		g.Expect(find(t, objs, "CustomResourceDefinition", crd).GetAnnotations()).To(
			HaveKeyWithValue("helm.sh/resource-policy", "keep"), "crds.keep defaults to true")
	}
	dep := find(t, objs, "Deployment", "herald-manager")
	pod, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec")
	g.Expect(pod["serviceAccountName"]).To(Equal("herald-manager"))
	c := container(t, dep)
	g.Expect(c["image"]).To(Equal("ghcr.io/herald-dev/herald:latest"))
	g.Expect(managerArgs(t, dep)).NotTo(HaveKey("dispatcher-nats-url"), "embedded JetStream by default")
}

func TestChartAllFeatures(t *testing.T) {
	g := NewWithT(t)
	objs := objects(t, render(t, allFeaturesValues...))

	dep := find(t, objs, "Deployment", "herald-manager")
	pod, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec")
	g.Expect(pod).To(HaveKeyWithValue("priorityClassName", "platform-critical"))
	for _, key := range []string{"nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "imagePullSecrets"} {
		g.Expect(pod).To(HaveKey(key))
	}
	g.Expect(dep.Object).To(HaveKeyWithValue("spec", HaveKeyWithValue("replicas", BeNumerically("==", 2))))
	meta, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "metadata")
	g.Expect(meta["annotations"]).To(HaveKeyWithValue("example.com/team", "platform"))
	g.Expect(meta["labels"]).To(HaveKeyWithValue("example.com/tier", "control-plane"))

	c := container(t, dep)
	g.Expect(c["image"]).To(Equal("ghcr.io/herald-dev/herald@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"))
	g.Expect(c["envFrom"]).To(HaveLen(1))
	g.Expect(c["env"]).To(HaveLen(1))
	args := managerArgs(t, dep)
	for flag, want := range map[string]string{
		"dispatcher-nats-url":                "tls://nats-0.nats.nats:4222,tls://nats-1.nats.nats:4222",
		"dispatcher-nats-credentials-secret": "herald-nats-user",
		"dispatcher-nats-tls-secret":         "herald-nats-client-tls",
		"dispatcher-replicas":                "3",
		"dispatcher-allowed-cidrs":           "10.0.0.0/8,fd00::/8",
		"dispatcher-cluster-cidrs":           "100.64.0.0/10",
		"dispatcher-network-policy":          "true",
		"dispatcher-network-policy-cidrs":    "172.20.0.1/32,10.10.0.0/24",
		// A fractional rate stays fractional; whole numbers are integers.
		"dispatcher-ingest-namespace-rate":          "2.5",
		"dispatcher-ingest-namespace-burst":         "20",
		"dispatcher-ingest-namespace-max-in-flight": "16",
		"dispatcher-ingest-max-connections":         "2048",
		"dispatcher-token-review-rate":              "100",
		"dispatcher-node-selector":                  `{"pool":"webhooks"}`,
		"dispatcher-priority-class-name":            "webhooks-high",
		"dispatcher-image":                          "ghcr.io/herald-dev/herald@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"dispatcher-memory-limit":                   "1Gi",
		"metrics-bind-address":                      ":9443",
		"dispatcher-delivery-api-port":              "9445",
		"dispatcher-tls-issuer":                     "external",
		"dispatcher-tls-extra-hosts":                "events.example.com,10.96.0.50,fd00::50",
		"zap-log-level":                             "debug",
	} {
		g.Expect(args).To(HaveKeyWithValue(flag, want))
	}
	g.Expect(args["dispatcher-tolerations"]).To(ContainSubstring(`"value":"webhooks"`))
	g.Expect(args["dispatcher-affinity"]).To(ContainSubstring(`"nodeAffinity"`))

	for _, crd := range heraldCRDs {
		g.Expect(find(t, objs, "CustomResourceDefinition", crd).GetAnnotations()).NotTo(
			HaveKey("helm.sh/resource-policy"), "crds.keep=false")
	}
	find(t, objs, "PodDisruptionBudget", "herald-manager")
	// cert-manager issues the ingest certificate, with the extra hosts split
	// into DNS names and IP addresses as the manager splits them.
	find(t, objs, "Issuer", "herald-selfsigned")
	find(t, objs, "Issuer", "herald-ca")
	find(t, objs, "Certificate", "herald-ca")
	cert := findNamespaced(t, objs, "Certificate", releaseNamespace, "herald-dispatcher-tls")
	g.Expect(cert.Object).To(HaveKeyWithValue("spec", And(
		HaveKeyWithValue("secretName", "herald-dispatcher-tls"),
		HaveKeyWithValue("dnsNames", ContainElements("herald-dispatcher.herald-system.svc", "events.example.com")),
		HaveKeyWithValue("ipAddresses", ConsistOf("10.96.0.50", "fd00::50")),
	)))
	find(t, objs, "ServiceMonitor", "herald-manager")
	find(t, objs, "ServiceMonitor", "herald-dispatcher")
	find(t, objs, "PrometheusRule", "herald")
	dashboard := find(t, objs, "ConfigMap", "herald-grafana-dashboard")
	g.Expect(dashboard.GetLabels()).To(HaveKeyWithValue("grafana_dashboard", "1"))
	np := find(t, objs, "NetworkPolicy", "herald-allow-metrics-traffic")
	g.Expect(np.Object).To(HaveKeyWithValue("spec", HaveKeyWithValue("ingress",
		ContainElement(HaveKeyWithValue("ports", ContainElement(HaveKeyWithValue("port", BeNumerically("==", 9443))))))))
}

// TestChartDispatcherRBACNamespaces: the dispatcher's Role and bindings
// follow the dispatcher's namespace (the release namespace unless
// dispatcher.namespace says otherwise), where the manager creates its
// ServiceAccount; the binding to the API server's authentication
// ConfigMap reader stays in kube-system, where that Role is.
func TestChartDispatcherRBACNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name, dispatcherNamespace string
		args                      []string
	}{
		{"release namespace", "webhooks", []string{"--namespace", "webhooks"}},
		{"dispatcher.namespace", "webhooks-data", []string{"--namespace", "webhooks", "--set", "dispatcher.namespace=webhooks-data"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			objs := objects(t, render(t, tc.args...))
			wantSubject := ConsistOf(map[string]any{"kind": "ServiceAccount", "name": "herald-dispatcher", "namespace": tc.dispatcherNamespace})

			findNamespaced(t, objs, "Role", tc.dispatcherNamespace, "herald-dispatcher")
			for _, b := range []struct{ kind, namespace, name string }{
				{"RoleBinding", tc.dispatcherNamespace, "herald-dispatcher"},
				{"ClusterRoleBinding", "", "herald-dispatcher"},
				{"ClusterRoleBinding", "", "herald-dispatcher-auth-delegator"},
				{"RoleBinding", "kube-system", "herald-dispatcher-auth-reader"},
			} {
				binding := findNamespaced(t, objs, b.kind, b.namespace, b.name)
				g.Expect(binding.Object["subjects"]).To(wantSubject, "%s %s", b.kind, b.name)
			}
			// The manager's Role for the dispatcher's objects.
			findNamespaced(t, objs, "Role", tc.dispatcherNamespace, "herald-manager")
		})
	}
}

// TestChartCertManagerNamespace: the cert-manager objects follow the
// dispatcher's namespace, where the manager mounts the Secret from, and the
// certificate names the dispatcher Service there.
func TestChartCertManagerNamespace(t *testing.T) {
	g := NewWithT(t)
	objs := objects(t, render(t, "--set", "dispatcher.namespace=webhooks-data,dispatcher.tls.certManager.enabled=true"))
	for _, o := range objs {
		if strings.HasPrefix(o.GetAPIVersion(), "cert-manager.io/") {
			g.Expect(o.GetNamespace()).To(Equal("webhooks-data"), "%s %s", o.GetKind(), o.GetName())
		}
	}
	cert := findNamespaced(t, objs, "Certificate", "webhooks-data", "herald-dispatcher-tls")
	dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	g.Expect(dnsNames).To(ContainElement("herald-dispatcher.webhooks-data.svc"))
}

// TestChartIngestInsecureHTTP: plain HTTP ingest reaches the manager's flag.
// all-features-values.yaml cannot set it: it excludes cert-manager.
func TestChartIngestInsecureHTTP(t *testing.T) {
	args := managerArgs(t, find(t, objects(t, render(t, "--set", "dispatcher.ingest.insecureHTTP=true")), "Deployment", "herald-manager"))
	if got := args["dispatcher-ingest-insecure-http"]; got != "true" {
		t.Errorf("--dispatcher-ingest-insecure-http=%q, want true", got)
	}
}

func TestChartWithoutCRDs(t *testing.T) {
	for _, o := range objects(t, render(t, "--set", "crds.enabled=false")) {
		if o.GetKind() == "CustomResourceDefinition" {
			t.Errorf("crds.enabled=false still renders %s", o.GetName())
		}
	}
}

// TestChartAcceptedByAPIServer has the local API server validate every
// object the chart renders (server-side dry run), with defaults and with
// every feature on. The Prometheus Operator's and cert-manager's CRDs are
// not available here: stand-ins that accept any spec let the monitoring and
// cert-manager objects through the dry run, so their contents are checked
// by TestAlertRules (promtool), TestChartCertManagerMatchesComponent and
// TestChartAllFeatures, not by the API server.
func TestChartAcceptedByAPIServer(t *testing.T) {
	kubectl(t, strings.NewReader(monitoringCRDStandIns), "apply", "--server-side", "-f", "-")
	kubectl(t, strings.NewReader(certManagerCRDStandIns), "apply", "--server-side", "-f", "-")
	kubectl(t, nil, "create", "namespace", "chart-dry-run")
	for name, values := range map[string][]string{"defaults": defaultValues, "all features": allFeaturesValues} {
		t.Run(name, func(t *testing.T) {
			rendered := render(t, append([]string{"--namespace", "chart-dry-run"}, values...)...)
			// No -n: every namespaced object carries its namespace, and one
			// (the delivery API's auth-reader RoleBinding) is in kube-system.
			out := kubectl(t, strings.NewReader(rendered), "apply", "--server-side", "--dry-run=server",
				"--field-manager=chart-test", "-f", "-")
			if strings.Contains(out, "Warning") {
				t.Errorf("warnings: %s", out)
			}
			for _, o := range objects(t, rendered) {
				if !strings.Contains(out, strings.ToLower(o.GetKind())) || !strings.Contains(out, "/"+o.GetName()+" serverside-applied (server dry run)") {
					t.Errorf("%s %s was not dry-run: %s", o.GetKind(), o.GetName(), out)
				}
			}
		})
	}
}

// heraldCRDs are the CRDs the chart installs.
var heraldCRDs = []string{"webhookendpoints.herald.dev", "subscriptions.herald.dev", "redeliveries.herald.dev"}

// Stand-ins for the Prometheus Operator's and cert-manager's CRDs, which
// this machine cannot download.
var (
	monitoringCRDStandIns  = crdStandIns("monitoring.coreos.com", "ServiceMonitor", "PrometheusRule")
	certManagerCRDStandIns = crdStandIns("cert-manager.io", "Issuer", "Certificate")
)

// crdStandIns returns namespaced CRDs of the group with the kinds' names
// that accept any spec.
func crdStandIns(group string, kinds ...string) string {
	var docs []string
	for _, kind := range kinds {
		lower := strings.ToLower(kind)
		docs = append(docs, fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: %[2]ss.%[3]s}
spec:
  group: %[3]s
  names: {kind: %[1]s, listKind: %[1]sList, plural: %[2]ss, singular: %[2]s}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`, kind, lower, group))
	}
	return strings.Join(docs, "---\n")
}

func container(t *testing.T, dep *unstructured.Unstructured) map[string]any {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if len(containers) != 1 {
		t.Fatalf("%s has %d containers, want 1", dep.GetName(), len(containers))
	}
	return containers[0].(map[string]any)
}

// managerArgs returns the manager container's flags as name → value
// ("true" for a bare boolean flag).
func managerArgs(t *testing.T, dep *unstructured.Unstructured) map[string]string {
	t.Helper()
	raw, _, _ := unstructured.NestedStringSlice(container(t, dep), "args")
	return parseFlags(t, raw)
}

func parseFlags(t *testing.T, args []string) map[string]string {
	t.Helper()
	flags := map[string]string{}
	for _, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			t.Fatalf("argument %q is not a flag", a)
		}
		if !hasValue {
			value = "true"
		}
		if _, dup := flags[name]; dup {
			t.Errorf("flag --%s given twice", name)
		}
		flags[name] = value
	}
	return flags
}
