package chart

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/herald-dev/herald/test/e2e"
)

// chartOnlyFlags are manager flags the chart deliberately leaves out.
var chartOnlyFlags = map[string]string{
	"kubeconfig": "in a cluster the manager uses its ServiceAccount",
	"version":    "prints the version and exits",
}

// exclusiveFlags are manager flags that all-features-values.yaml cannot set
// because they exclude one it sets (the schema refuses both); each is
// checked with these values on top instead.
var exclusiveFlags = map[string][]string{
	"dispatcher-nats-nkey-secret": {"--set", "dispatcher.nats.credentialsSecret=,dispatcher.nats.nkeySecret=herald-nats-nkey"},
}

// TestChartMatchesKustomize renders config/default and the chart for the
// same settings (release "herald" in herald-system, the defaults of both)
// and fails on any difference in the CRDs, the RBAC rules or the effective
// manager flags. It also fails when the manager binary has a flag the chart
// cannot set.
func TestChartMatchesKustomize(t *testing.T) {
	fromKustomize := objects(t, kustomize(t))
	fromChart := objects(t, render(t))

	t.Run("CRDs", func(t *testing.T) { compareCRDs(t, fromKustomize, fromChart) })
	t.Run("RBAC rules", func(t *testing.T) { compareRBAC(t, fromKustomize, fromChart) })
	t.Run("manager flags", func(t *testing.T) {
		defaults := managerFlagDefaults(t)
		kustomizeArgs := managerArgs(t, find(t, fromKustomize, "Deployment", "herald-manager"))
		chartArgs := managerArgs(t, find(t, fromChart, "Deployment", "herald-manager"))
		allFeatures := managerArgs(t, find(t, objects(t, render(t, allFeaturesValues...)), "Deployment", "herald-manager"))
		for _, flag := range sortedKeys(defaults) {
			if reason, skip := chartOnlyFlags[flag]; skip {
				if _, set := allFeatures[flag]; set {
					t.Errorf("the chart sets --%s, listed in chartOnlyFlags (%s)", flag, reason)
				}
				continue
			}
			settable := allFeatures
			if extra, ok := exclusiveFlags[flag]; ok {
				settable = managerArgs(t, find(t, objects(t, render(t, append(slices.Clone(allFeaturesValues), extra...)...)),
					"Deployment", "herald-manager"))
			}
			if _, ok := settable[flag]; !ok {
				t.Errorf("manager flag --%s has no chart value: add a value to charts/herald/values.yaml and "+
					"values.schema.json, one line in herald.managerFlags (charts/herald/templates/_helpers.tpl), "+
					"and set it in charts/herald/ci/all-features-values.yaml", flag)
			}
			want := effective(kustomizeArgs, defaults, flag)
			if got := effective(chartArgs, defaults, flag); got != want {
				t.Errorf("--%s: config/default runs the manager with %q, the chart with defaults renders %q", flag, want, got)
			}
		}
		for _, args := range []map[string]string{kustomizeArgs, chartArgs, allFeatures} {
			for flag := range args {
				if _, ok := defaults[flag]; !ok {
					t.Errorf("--%s is passed to the manager, which has no such flag", flag)
				}
			}
		}
	})
}

// TestChartCertManagerMatchesComponent: with dispatcher.tls.certManager.enabled
// the chart renders what config/components/cert-manager adds to
// config/default: the same cert-manager objects (beyond the chart's labels)
// and the same change to the manager's flags.
func TestChartCertManagerMatchesComponent(t *testing.T) {
	withComponent := objects(t, kustomize(t, "components/cert-manager"))
	withValue := objects(t, render(t, "--set", "dispatcher.tls.certManager.enabled=true"))

	certManagerObjects := func(objs []*unstructured.Unstructured) map[string]map[string]any {
		m := map[string]map[string]any{}
		for _, o := range objs {
			if strings.HasPrefix(o.GetAPIVersion(), "cert-manager.io/") {
				o = o.DeepCopy()
				o.SetLabels(nil)
				m[fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())] = o.Object
			}
		}
		return m
	}
	fromComponent := certManagerObjects(withComponent)
	if len(fromComponent) == 0 {
		t.Fatal("config/components/cert-manager renders no cert-manager.io objects")
	}
	compareByKey(t, "config/components/cert-manager", fromComponent, certManagerObjects(withValue))

	managerOf := func(objs []*unstructured.Unstructured) map[string]string {
		return managerArgs(t, find(t, objs, "Deployment", "herald-manager"))
	}
	componentChange := changedFlags(managerOf(objects(t, kustomize(t))), managerOf(withComponent))
	valueChange := changedFlags(managerOf(objects(t, render(t))), managerOf(withValue))
	if !reflect.DeepEqual(componentChange, valueChange) {
		t.Errorf("the component changes the manager's flags by %v, the chart's value by %v", componentChange, valueChange)
	}
}

// changedFlags returns the flags whose value differs from before to after,
// with their new value ("" when after leaves the flag out).
func changedFlags(before, after map[string]string) map[string]string {
	changed := map[string]string{}
	for flag, value := range after {
		if old, ok := before[flag]; !ok || old != value {
			changed[flag] = value
		}
	}
	for flag := range before {
		if _, ok := after[flag]; !ok {
			changed[flag] = ""
		}
	}
	return changed
}

// kustomize renders config/default as `kubectl apply -k` would, with the
// given directories of config/ added as components by an overlay, as the
// README's overlays add them.
func kustomize(t *testing.T, components ...string) string {
	t.Helper()
	dir := filepath.Join(root, "config", "default")
	if len(components) > 0 {
		overlay := t.TempDir()
		rel := func(configDir string) string {
			p, err := filepath.Rel(overlay, filepath.Join(root, "config", configDir))
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		relComponents := make([]string, len(components))
		for i, c := range components {
			relComponents[i] = rel(c)
		}
		kustomization := fmt.Sprintf("resources: [%s]\ncomponents: [%s]\n", rel("default"), strings.Join(relComponents, ", "))
		if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
			t.Fatal(err)
		}
		dir = overlay
	}
	out, err := run(context.Background(), nil, filepath.Join(assetsDir, "kubectl"), "kustomize", dir)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// compareCRDs: the chart's copies are the bytes of config/crd/bases, and
// what the chart renders is those CRDs plus only its labels and the keep
// annotation.
func compareCRDs(t *testing.T, fromKustomize, fromChart []*unstructured.Unstructured) {
	bases, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	if err != nil || len(bases) == 0 {
		t.Fatalf("no CRDs in config/crd/bases: %v", err)
	}
	for _, base := range bases {
		want, err := os.ReadFile(base)
		if err != nil {
			t.Fatal(err)
		}
		copyPath := filepath.Join(chartDir, "files", "crds", filepath.Base(base))
		got, err := os.ReadFile(copyPath)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not a byte-for-byte copy of %s: run `make manifests` (err: %v)", copyPath, base, err)
		}
	}
	var kustomizeCRDs []string
	for _, k := range fromKustomize {
		if k.GetKind() != "CustomResourceDefinition" {
			continue
		}
		kustomizeCRDs = append(kustomizeCRDs, k.GetName())
		c := find(t, fromChart, "CustomResourceDefinition", k.GetName()).DeepCopy()
		k = k.DeepCopy()
		annotations := c.GetAnnotations()
		delete(annotations, "helm.sh/resource-policy")
		c.SetAnnotations(annotations)
		c.SetLabels(nil)
		k.SetLabels(nil)
		if !reflect.DeepEqual(k.Object, c.Object) {
			t.Errorf("CRD %s differs between config/default and the chart (beyond the chart's labels and keep annotation):\n%s",
				k.GetName(), yamlDiff(t, k.Object, c.Object))
		}
	}
	for _, c := range fromChart {
		if c.GetKind() == "CustomResourceDefinition" && !slices.Contains(kustomizeCRDs, c.GetName()) {
			t.Errorf("the chart renders CRD %s, config/default does not", c.GetName())
		}
	}
}

// compareRBAC compares the rules of every Role and ClusterRole by name,
// and what each binding grants to whom.
func compareRBAC(t *testing.T, fromKustomize, fromChart []*unstructured.Unstructured) {
	rbacKinds := []string{"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
	index := func(objs []*unstructured.Unstructured) map[string]map[string]any {
		m := map[string]map[string]any{}
		for _, o := range objs {
			if !slices.Contains(rbacKinds, o.GetKind()) {
				continue
			}
			key := fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
			if o.GetNamespace() == "" {
				key = fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
			}
			content := map[string]any{}
			for _, field := range []string{"rules", "roleRef", "subjects", "aggregationRule"} {
				if v, ok := o.Object[field]; ok {
					content[field] = v
				}
			}
			if agg := o.GetLabels(); agg != nil {
				for l, v := range agg {
					if strings.HasPrefix(l, "rbac.authorization.k8s.io/aggregate-to-") {
						content["label "+l] = v
					}
				}
			}
			m[key] = content
		}
		return m
	}
	compareByKey(t, "config/default", index(fromKustomize), index(fromChart))
}

// compareByKey fails on every key that only one side has and on every
// value that differs; source names the kustomize side in the messages.
func compareByKey(t *testing.T, source string, fromKustomize, fromChart map[string]map[string]any) {
	t.Helper()
	for _, key := range sortedKeys(fromKustomize) {
		got, ok := fromChart[key]
		switch {
		case !ok:
			t.Errorf("%s is in %s but the chart does not render it", key, source)
		case !reflect.DeepEqual(fromKustomize[key], got):
			t.Errorf("%s differs between %s and the chart:\n%s", key, source, yamlDiff(t, fromKustomize[key], got))
		}
	}
	for _, key := range sortedKeys(fromChart) {
		if _, ok := fromKustomize[key]; !ok {
			t.Errorf("%s is rendered by the chart but is not in %s", key, source)
		}
	}
}

// managerFlagDefaults runs the manager binary with -h and returns each
// flag's default as the flag package prints it ("" when it prints none).
func managerFlagDefaults(t *testing.T) map[string]string {
	t.Helper()
	bins, err := e2e.Build(context.Background(), root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// The flag package prints the usage on standard error and exits 0.
	out, err := exec.Command(bins.Manager, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("manager -h: %v: %s", err, out)
	}
	return parseFlagDefaults(string(out))
}

var (
	flagLine    = regexp.MustCompile(`^  -([a-z0-9-]+)(?: (\w+))?$`)
	defaultText = regexp.MustCompile(`\(default (.*)\)$`)
)

func parseFlagDefaults(help string) map[string]string {
	defaults := map[string]string{}
	var current, kind string
	for _, line := range strings.Split(help, "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			current, kind = m[1], m[2]
			switch kind {
			case "":
				defaults[current] = "false" // a boolean
			case "int", "uint", "int64", "uint64", "float":
				defaults[current] = "0"
			default:
				defaults[current] = ""
			}
			continue
		}
		if current == "" {
			continue
		}
		if m := defaultText.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			defaults[current] = strings.Trim(m[1], `"`)
		}
	}
	return defaults
}

func effective(args, defaults map[string]string, flag string) string {
	if v, ok := args[flag]; ok {
		return v
	}
	return defaults[flag]
}

func yamlDiff(t *testing.T, want, got any) string {
	t.Helper()
	w, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	g, err := yaml.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	wl, gl := strings.Split(string(w), "\n"), strings.Split(string(g), "\n")
	var b strings.Builder
	for i := 0; i < max(len(wl), len(gl)); i++ {
		var a, c string
		if i < len(wl) {
			a = wl[i]
		}
		if i < len(gl) {
			c = gl[i]
		}
		if a != c {
			fmt.Fprintf(&b, "  line %d: config/default %q, chart %q\n", i+1, a, c)
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
