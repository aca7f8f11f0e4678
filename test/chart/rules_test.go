package chart

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// TestAlertRules checks the alert rules with promtool (PROMTOOL, built by
// make test) and evaluates every alert against the recorded series in
// testdata/alerts_test.yaml. It also checks the chart renders the same
// rules as the kustomize component.
func TestAlertRules(t *testing.T) {
	promtool := os.Getenv("PROMTOOL")
	if promtool == "" {
		t.Fatal("PROMTOOL is not set: run `make test` or `make test-chart`, which build the pinned promtool into bin/")
	}
	raw, err := os.ReadFile(filepath.Join(root, "config", "monitoring", "prometheus_rule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &rule); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rules := filepath.Join(dir, "full-rules.yaml")
	writeYAML(t, rules, rule.Spec)
	out, err := run(context.Background(), nil, promtool, "check", "rules", rules)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "SUCCESS: 5 rules found") {
		t.Errorf("promtool check rules: %s", out)
	}

	// promtool test rules compares annotations too; they are prose, so the
	// evaluated copy leaves them out and the test asserts labels.
	for _, group := range rule.Spec["groups"].([]any) {
		for _, r := range group.(map[string]any)["rules"].([]any) {
			delete(r.(map[string]any), "annotations")
		}
	}
	writeYAML(t, filepath.Join(dir, "rules.yaml"), rule.Spec)
	tests, err := os.ReadFile(filepath.Join("testdata", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	testFile := filepath.Join(dir, "alerts_test.yaml")
	if err := os.WriteFile(testFile, tests, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(context.Background(), nil, promtool, "test", "rules", testFile); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules: %s", out)
	}

	// Every alert has a test.
	for _, group := range rule.Spec["groups"].([]any) {
		for _, r := range group.(map[string]any)["rules"].([]any) {
			if name := r.(map[string]any)["alert"].(string); !strings.Contains(string(tests), "alertname: "+name+"\n") {
				t.Errorf("alert %s has no test in testdata/alerts_test.yaml", name)
			}
		}
	}

	// The chart's PrometheusRule carries the same groups.
	var fromKustomize map[string]any
	if err := yaml.Unmarshal(raw, &fromKustomize); err != nil {
		t.Fatal(err)
	}
	chartRule := find(t, objects(t, render(t, allFeaturesValues...)), "PrometheusRule", "herald")
	if !reflect.DeepEqual(chartRule.Object["spec"], fromKustomize["spec"]) {
		t.Errorf("the chart's PrometheusRule differs from config/monitoring/prometheus_rule.yaml: run `make manifests`")
	}
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMonitoringComponent renders config/default with the config/monitoring
// component, as the README's overlay does, and has the API server dry-run
// the monitoring objects (against stand-in Prometheus Operator CRDs).
func TestMonitoringComponent(t *testing.T) {
	rendered := kustomize(t, "monitoring")
	var monitoring []string
	for _, o := range objects(t, rendered) {
		switch o.GetKind() {
		case "ServiceMonitor", "PrometheusRule", "ConfigMap":
			if o.GetNamespace() != releaseNamespace {
				t.Errorf("%s %s is in namespace %q, want %s", o.GetKind(), o.GetName(), o.GetNamespace(), releaseNamespace)
			}
			b, err := yaml.Marshal(o.Object)
			if err != nil {
				t.Fatal(err)
			}
			monitoring = append(monitoring, string(b))
		}
	}
	find(t, objects(t, rendered), "ServiceMonitor", "herald-manager")
	find(t, objects(t, rendered), "ServiceMonitor", "herald-dispatcher")
	find(t, objects(t, rendered), "PrometheusRule", "herald")
	dashboard := find(t, objects(t, rendered), "ConfigMap", "herald-grafana-dashboard")
	if data, _, _ := unstructured.NestedString(dashboard.Object, "data", "herald.json"); !strings.Contains(data, "herald_endpoint_oldest_pending_age_seconds") {
		t.Errorf("the dashboard ConfigMap lacks the dashboard: %.200s", data)
	}

	kubectl(t, strings.NewReader(monitoringCRDStandIns), "apply", "--server-side", "-f", "-")
	if _, err := kubectlErr(nil, "get", "namespace", releaseNamespace); err != nil {
		kubectl(t, nil, "create", "namespace", releaseNamespace)
	}
	out := kubectl(t, strings.NewReader(strings.Join(monitoring, "---\n")), "apply", "--server-side", "--dry-run=server", "-f", "-")
	if strings.Count(out, "serverside-applied (server dry run)") != 4 {
		t.Errorf("want 4 monitoring objects dry-run, got: %s", out)
	}
}
