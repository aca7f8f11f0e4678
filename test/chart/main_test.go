// Package chart tests the Helm chart in charts/herald and the monitoring kit
// in config/monitoring: helm lint, helm template, server-side dry runs and a
// helm install/upgrade/uninstall against a local control plane, the drift
// between the chart and config/default, and promtool on the alert rules.
//
// `make test` builds the pinned helm and promtool into bin/ and passes
// their paths in HELM and PROMTOOL; KUBEBUILDER_ASSETS names etcd,
// kube-apiserver and kubectl, as for the other envtest suites.
package chart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/herald-dev/herald/test/e2e"
)

const (
	releaseName      = "herald"
	releaseNamespace = "herald-system"
)

var (
	root      string // repository root
	chartDir  string // charts/herald
	helmBin   string
	assetsDir string // etcd, kube-apiserver, kubectl
	// cluster is a bare local control plane: no CRDs, nothing installed,
	// so that helm install owns everything it creates.
	cluster *controlPlane
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	var err error
	if root, err = e2e.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	chartDir = filepath.Join(root, "charts", "herald")
	helmBin, assetsDir = os.Getenv("HELM"), os.Getenv("KUBEBUILDER_ASSETS")
	if helmBin == "" || assetsDir == "" {
		fmt.Fprintln(os.Stderr, "HELM or KUBEBUILDER_ASSETS is not set: run `make test` or `make test-chart`, "+
			"which build the pinned helm, promtool, etcd, kube-apiserver and kubectl into bin/")
		return 1
	}
	dir, err := os.MkdirTemp("", "herald-chart-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if cluster, err = startControlPlane(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	cluster.stop()
	if code == 0 {
		_ = os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "logs kept in %s\n", dir)
	}
	return code
}

type controlPlane struct {
	dir        string
	kubeconfig string
	env        *envtest.Environment
}

func startControlPlane(dir string) (*controlPlane, error) {
	env := &envtest.Environment{BinaryAssetsDirectory: assetsDir}
	if _, err := env.Start(); err != nil {
		return nil, fmt.Errorf("start local control plane: %w", err)
	}
	cp := &controlPlane{dir: dir, env: env, kubeconfig: filepath.Join(dir, "kubeconfig")}
	user, err := env.AddUser(envtest.User{Name: "chart-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		cp.stop()
		return nil, fmt.Errorf("add admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err == nil {
		err = os.WriteFile(cp.kubeconfig, kc, 0o600)
	}
	if err != nil {
		cp.stop()
		return nil, err
	}
	return cp, nil
}

func (c *controlPlane) stop() { _ = c.env.Stop() }

// run runs a command and returns its standard output; on failure the error
// carries standard error too.
func run(ctx context.Context, stdin io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	// helm keeps its cache and configuration out of $HOME.
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(cluster.dir, "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(cluster.dir, "helm-config"), "HELM_DATA_HOME="+filepath.Join(cluster.dir, "helm-data"))
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(context.Background(), nil, helmBin, append(args, "--kubeconfig", cluster.kubeconfig)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kubectl(t *testing.T, stdin io.Reader, args ...string) string {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kubectlErr(stdin io.Reader, args ...string) (string, error) {
	return run(context.Background(), stdin, filepath.Join(assetsDir, "kubectl"), append([]string{"--kubeconfig", cluster.kubeconfig}, args...)...)
}

// values files of the chart's test configurations.
var (
	defaultValues     []string
	allFeaturesValues = []string{"--values", "ci/all-features-values.yaml"}
)

// render runs helm template with the release name and namespace the README
// uses, from the chart directory (so values paths are relative to it).
func render(t *testing.T, args ...string) string {
	t.Helper()
	full := append([]string{"template", releaseName, chartDir, "--namespace", releaseNamespace}, args...)
	for i, a := range full {
		if strings.HasPrefix(a, "ci/") {
			full[i] = filepath.Join(chartDir, a)
		}
	}
	out, err := run(context.Background(), nil, helmBin, full...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// objects decodes a multi-document YAML stream, skipping empty documents.
func objects(t *testing.T, manifests string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("decode manifests: %v", err)
		}
		if len(obj.Object) > 0 {
			objs = append(objs, obj)
		}
	}
}

// findNamespaced returns the object of that kind, namespace and name, or
// fails; namespace is empty for a cluster-scoped object.
func findNamespaced(t *testing.T, objs []*unstructured.Unstructured, kind, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s/%s rendered", kind, namespace, name)
	return nil
}

// find returns the object of that kind and name, or fails.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}
