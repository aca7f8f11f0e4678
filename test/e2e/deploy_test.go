package e2e

import (
	"bufio"
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/controllers"
)

// TestConfigDefaultAcceptedByAPIServer renders config/default with kustomize
// and has the API server validate every object (server-side dry run), with
// the namespace enforcing the restricted Pod Security profile.
func TestConfigDefaultAcceptedByAPIServer(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	rendered, err := herald.Kubectl(ctx, "kustomize", filepath.Join(herald.Root, "config", "default"))
	g.Expect(err).NotTo(HaveOccurred())
	for _, kind := range []string{"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
		"ServiceAccount", "Namespace", "Deployment", "Service", "NetworkPolicy",
		"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		g.Expect(rendered).To(ContainSubstring("kind: "+kind+"\n"), "config/default renders a %s", kind)
	}
	g.Expect(rendered).To(ContainSubstring("pod-security.kubernetes.io/enforce: restricted"))

	// The namespace must exist for namespaced objects to be dry-run.
	ns := firstDocument(t, rendered, "Namespace")
	_, err = herald.ApplyYAML(ctx, "", ns)
	g.Expect(err).NotTo(HaveOccurred())

	out, err := dryRun(ctx, rendered)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("deployment.apps/herald-manager serverside-applied (server dry run)"))
	g.Expect(out).To(ContainSubstring("networkpolicy.networking.k8s.io/herald-allow-metrics-traffic serverside-applied (server dry run)"))
	g.Expect(out).To(ContainSubstring("validatingadmissionpolicy.admissionregistration.k8s.io/herald-webhookendpoint-secret-references serverside-applied (server dry run)"))
	g.Expect(out).To(ContainSubstring("validatingadmissionpolicybinding.admissionregistration.k8s.io/herald-webhookendpoint-secret-references serverside-applied (server dry run)"))
	// Both are cluster-scoped: kustomize's namespace must not stick to them.
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		g.Expect(firstDocument(t, rendered, kind)).NotTo(ContainSubstring("namespace: herald-system"), kind)
	}
	g.Expect(out).NotTo(ContainSubstring("Warning"), "no Pod Security or deprecation warnings")

	// The manager Deployment: leader election, probes, resources, non-root,
	// read-only root filesystem.
	dep := firstDocument(t, rendered, "Deployment")
	for _, want := range []string{"--leader-elect", "livenessProbe:", "readinessProbe:", "limits:", "runAsNonRoot: true",
		"readOnlyRootFilesystem: true", "allowPrivilegeEscalation: false", "type: RuntimeDefault"} {
		g.Expect(dep).To(ContainSubstring(want))
	}
}

// TestDispatcherObjectsAcceptedByAPIServer dry-runs what the manager
// builds for the dispatcher, in both queue modes, in the restricted
// namespace.
func TestDispatcherObjectsAcceptedByAPIServer(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []struct{ name, natsURL string }{
		{"embedded", ""},
		{"external", "nats://nats-0.nats:4222,nats://nats-1.nats:4222"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			g := NewWithT(t)
			cfg := controllers.DefaultDispatcherConfig()
			// Not herald-system: the harness's local dispatcher has its
			// (ExternalName) Service there, for the delivery API.
			cfg.Namespace = "e2e-dispatcher-objects"
			cfg.NATSURL = mode.natsURL
			cfg.Replicas = 3
			g.Expect(cfg.Validate()).To(Succeed())
			var docs []string
			for _, obj := range controllers.DispatcherObjects(cfg) {
				b, err := yaml.Marshal(obj)
				g.Expect(err).NotTo(HaveOccurred())
				docs = append(docs, string(b))
			}
			manifests := strings.Join(docs, "---\n")
			_, err := herald.ApplyYAML(ctx, "", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+cfg.Namespace+"\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n")
			g.Expect(err).NotTo(HaveOccurred())
			out, err := dryRun(ctx, manifests)
			g.Expect(err).NotTo(HaveOccurred(), out)
			g.Expect(out).To(ContainSubstring("deployment.apps/herald-dispatcher serverside-applied (server dry run)"))
			g.Expect(out).NotTo(ContainSubstring("Warning"))
		})
	}
}

func dryRun(ctx context.Context, manifests string) (string, error) {
	f := filepath.Join(herald.Dir, "dry-run.yaml")
	if err := os.WriteFile(f, []byte(manifests), 0o600); err != nil {
		return "", err
	}
	return herald.Kubectl(ctx, "apply", "--server-side", "--field-manager=herald-test", "--dry-run=server", "-f", f)
}

// firstDocument returns the first YAML document of a kind.
func firstDocument(t *testing.T, manifests, kind string) string {
	t.Helper()
	for _, doc := range strings.Split(manifests, "\n---\n") {
		if strings.Contains(doc, "\nkind: "+kind+"\n") || strings.HasPrefix(doc, "kind: "+kind+"\n") {
			return doc
		}
	}
	t.Fatalf("no %s in manifests", kind)
	return ""
}

// TestCertManagerComponentIssuesTheSecretTheDispatcherMounts renders
// config/default with config/components/cert-manager: the Certificate
// writes the Secret the dispatcher Deployment mounts, for the names the
// manager itself would issue, and the manager is told not to issue.
// (cert-manager's CRDs are not installed here, so this is a rendering
// test, not a dry run.)
func TestCertManagerComponentIssuesTheSecretTheDispatcherMounts(t *testing.T) {
	g := NewWithT(t)
	overlay := t.TempDir()
	rel := func(dir string) string {
		p, err := filepath.Rel(overlay, filepath.Join(herald.Root, "config", dir))
		g.Expect(err).NotTo(HaveOccurred())
		return p
	}
	g.Expect(os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(
		"resources: ["+rel("default")+"]\ncomponents: ["+rel("components/cert-manager")+"]\n"), 0o600)).To(Succeed())
	rendered, err := herald.Kubectl(context.Background(), "kustomize", overlay)
	g.Expect(err).NotTo(HaveOccurred())

	g.Expect(firstDocument(t, rendered, "Deployment")).To(ContainSubstring("- --dispatcher-tls-issuer=" + controllers.TLSIssuerExternal + "\n"))
	found := false
	for _, doc := range strings.Split(rendered, "\n---\n") {
		if !strings.Contains(doc, "kind: Certificate\n") {
			continue
		}
		var leaf struct {
			Metadata struct{ Namespace string }
			Spec     struct {
				SecretName string   `json:"secretName"`
				DNSNames   []string `json:"dnsNames"`
				IsCA       bool     `json:"isCA"`
			}
		}
		g.Expect(yaml.Unmarshal([]byte(doc), &leaf)).To(Succeed())
		if leaf.Spec.IsCA {
			continue
		}
		found = true
		cfg := controllers.DefaultDispatcherConfig()
		g.Expect(leaf.Metadata.Namespace).To(Equal(cfg.Namespace))
		g.Expect(leaf.Spec.SecretName).To(Equal(heraldv1.IngestTLSSecretName))
		g.Expect(leaf.Spec.DNSNames).To(Equal(controllers.IngestServingHosts(cfg)))
	}
	g.Expect(found).To(BeTrue(), "a serving Certificate")
}

// TestDockerfileBuildsStaticBinaries runs the Go build the Dockerfile runs,
// on a copy of exactly what the Dockerfile copies into its build stage, for
// each platform of the multi-arch image, as BuildKit runs it (the builder
// stage on the build machine's platform, TARGETOS and TARGETARCH set, the
// VERSION build argument), and checks both binaries are static
// (distroless/static has no libc), for the target's architecture, and print
// the stamped version. No Docker engine is needed: cross-compiling is what
// the image build does too.
func TestDockerfileBuildsStaticBinaries(t *testing.T) {
	g := NewWithT(t)
	dockerfile, err := os.ReadFile(filepath.Join(herald.Root, "Dockerfile"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(dockerfile)).To(ContainSubstring("FROM --platform=$BUILDPLATFORM golang:"), "the build stage cross-compiles instead of running emulated")
	g.Expect(string(dockerfile)).To(ContainSubstring("FROM gcr.io/distroless/static:nonroot"))
	g.Expect(string(dockerfile)).To(ContainSubstring("USER 65532:65532"))

	// Reproduce the build stage's context (only the COPY'd paths), its ENV
	// and its go build.
	ctxDir := t.TempDir()
	var build string
	var stageEnv []string
	sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(string(dockerfile), "\\\n", " ")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "COPY ") && !strings.HasPrefix(line, "COPY --") {
			srcs := strings.Fields(strings.TrimPrefix(line, "COPY "))
			for _, src := range srcs[:len(srcs)-1] {
				out, err := exec.Command("cp", "-r", filepath.Join(herald.Root, src), filepath.Join(ctxDir, src)).CombinedOutput()
				g.Expect(err).NotTo(HaveOccurred(), string(out))
			}
		}
		if strings.HasPrefix(line, "ENV ") {
			stageEnv = append(stageEnv, strings.Fields(strings.TrimPrefix(line, "ENV "))...)
		}
		if strings.HasPrefix(line, "RUN ") && strings.Contains(line, "go build") {
			build = strings.TrimPrefix(line, "RUN ")
		}
	}
	g.Expect(build).To(ContainSubstring("./cmd/manager"))
	g.Expect(build).To(ContainSubstring("./cmd/dispatcher"))
	g.Expect(build).To(ContainSubstring("-trimpath"))
	g.Expect(stageEnv).To(ContainElement("CGO_ENABLED=0"))

	const version = "v0.0.0-dockerfile-test"
	for _, platform := range []struct {
		arch    string
		machine elf.Machine
	}{
		{"amd64", elf.EM_X86_64},
		{"arm64", elf.EM_AARCH64},
	} {
		t.Run(platform.arch, func(t *testing.T) {
			g := NewWithT(t)
			// RUN runs its command with /bin/sh -c, with the stage's ENV and
			// its ARGs (BuildKit's platform arguments, --build-arg VERSION) as
			// environment variables.
			outDir := t.TempDir()
			cmd := exec.Command("/bin/sh", "-c", strings.ReplaceAll(build, "/out/", outDir+"/"))
			cmd.Dir = ctxDir
			cmd.Env = append(append(os.Environ(), stageEnv...),
				"TARGETOS=linux", "TARGETARCH="+platform.arch, "VERSION="+version)
			out, err := cmd.CombinedOutput()
			g.Expect(err).NotTo(HaveOccurred(), "%s: %s", build, out)
			for _, bin := range []string{"manager", "dispatcher"} {
				path := filepath.Join(outDir, bin)
				f, err := elf.Open(path)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(f.Machine).To(Equal(platform.machine), "%s for %s", bin, platform.arch)
				for _, p := range f.Progs {
					g.Expect(p.Type).NotTo(Equal(elf.PT_INTERP), "%s must be static", bin)
				}
				_ = f.Close()
				if runtime.GOOS == "linux" && runtime.GOARCH == platform.arch {
					g.Expect(versionOf(t, path)).To(Equal(version), bin)
				}
			}
		})
	}
}

// TestMakeBuildStampsVersion runs `make build` as a developer does and checks
// both binaries print the version it stamps.
func TestMakeBuildStampsVersion(t *testing.T) {
	g := NewWithT(t)
	const version = "v0.0.0-make-build-test"
	dir := t.TempDir()
	cmd := exec.Command("make", "build", "LOCALBIN="+dir, "VERSION="+version)
	cmd.Dir = herald.Root
	out, err := cmd.CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	for _, bin := range []string{"manager", "dispatcher"} {
		g.Expect(versionOf(t, filepath.Join(dir, bin))).To(Equal(version), bin)
	}
}

// versionOf runs bin --version, which must print the version and exit 0
// without touching a cluster or opening a port.
func versionOf(t *testing.T, bin string) string {
	t.Helper()
	cmd := exec.Command(bin, "--version")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "no-such-kubeconfig"))
	out, err := cmd.Output()
	if exitErr := (*exec.ExitError)(nil); errors.As(err, &exitErr) {
		t.Fatalf("%s --version: %v: %s", bin, err, exitErr.Stderr)
	}
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	return strings.TrimSpace(string(out))
}

// TestDispatcherAcceptsTheManagersArguments runs the real dispatcher binary
// with the arguments the manager puts in its Deployment (both queue modes):
// every flag must exist, or the pod would crash-loop in a cluster.
func TestDispatcherAcceptsTheManagersArguments(t *testing.T) {
	for i, natsURL := range []string{"", "nats://nats:4222"} {
		g := NewWithT(t)
		cfg := controllers.DefaultDispatcherConfig()
		cfg.NATSURL = natsURL
		cfg.IngestInsecureHTTP = i == 1 // and both ingest protocols
		cfg.AllowedCIDRs = []string{"10.0.0.0/8"}
		cfg.LogLevel = "warn"
		c := controllers.DispatcherDeployment(cfg).Spec.Template.Spec.Containers[0]
		g.Expect(c.Command).To(Equal([]string{"/dispatcher"}))
		// -h after every argument: flag parsing reaches it only when all
		// the arguments before it are defined and valid.
		out, err := exec.Command(herald.Bins.Dispatcher, append(append([]string{}, c.Args...), "-h")...).CombinedOutput()
		g.Expect(err).NotTo(HaveOccurred(), "dispatcher %v: %s", c.Args, out)
		g.Expect(string(out)).NotTo(ContainSubstring("flag provided but not defined"))
	}
}
