// Package e2e runs Herald the way a user does on a machine with no cluster:
// a local control plane (etcd and kube-apiserver as processes, the binaries
// envtest uses), the manager and the dispatcher as processes, and receivers
// on loopback. `make demo` and the end-to-end tests both drive it.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Scheme knows the built-in and Herald types.
var Scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(heraldv1.AddToScheme(s))
	utilruntime.Must(apiregistrationv1.AddToScheme(s))
	return s
}()

// RepoRoot finds the module root by walking up from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/herald-dev/herald\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Herald repository")
		}
		dir = parent
	}
}

// Env is a running local control plane.
type Env struct {
	Root       string // repository root
	Dir        string // scratch directory for kubeconfig, stores and logs
	Kubeconfig string
	Client     client.Client

	env *envtest.Environment
}

// StartControlPlane starts etcd and kube-apiserver from bin/k8s with
// Herald's CRDs installed and the publisher ClusterRole from config/rbac.
func StartControlPlane(ctx context.Context, dir string) (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s")
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		return nil, fmt.Errorf("no kube-apiserver in %s: run `make envtest` (or `make test`/`make demo`, which build it)", assets)
	}
	e := &Env{Root: root, Dir: dir, env: &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}}
	if err := e.configureFrontProxy(); err != nil {
		return nil, err
	}
	cfg, err := e.env.Start()
	if err != nil {
		return nil, fmt.Errorf("start local control plane: %w", err)
	}
	user, err := e.env.AddUser(envtest.User{Name: "herald-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		e.Stop()
		return nil, fmt.Errorf("add admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		e.Stop()
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	e.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, kc, 0o600); err != nil {
		e.Stop()
		return nil, err
	}
	if e.Client, err = client.New(cfg, client.Options{Scheme: Scheme}); err != nil {
		e.Stop()
		return nil, err
	}
	if err := e.applyPublisherRole(ctx); err != nil {
		e.Stop()
		return nil, err
	}
	// Herald's own namespace, as config/default creates it: the dispatcher
	// renews its status Lease there and the manager watches it.
	if err := e.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: heraldv1.DefaultNamespace}}); err != nil {
		e.Stop()
		return nil, fmt.Errorf("create namespace %s: %w", heraldv1.DefaultNamespace, err)
	}
	return e, nil
}

// frontProxyClient is the common name of the aggregator's client
// certificate, which extension API servers (the delivery API) trust to
// tell them who the user is.
const frontProxyClient = "front-proxy-client"

// configureFrontProxy gives kube-apiserver what the API aggregation layer
// needs, as kubeadm does: a front-proxy CA and client certificate, and the
// request headers the aggregator passes the user in. The kube-apiserver
// publishes them in kube-system/extension-apiserver-authentication, where
// the delivery API reads them.
func (e *Env) configureFrontProxy() error {
	dir := filepath.Join(e.Dir, "front-proxy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := newTestCA("front-proxy-ca")
	if err != nil {
		return err
	}
	caFile, err := ca.writeCA(dir, "ca")
	if err != nil {
		return err
	}
	certFile, keyFile, err := ca.issue(dir, "client", frontProxyClient, nil, nil)
	if err != nil {
		return err
	}
	e.env.ControlPlane.GetAPIServer().Configure().
		Set("requestheader-client-ca-file", caFile).
		Set("requestheader-allowed-names", frontProxyClient).
		Set("requestheader-username-headers", "X-Remote-User").
		Set("requestheader-group-headers", "X-Remote-Group").
		Set("requestheader-extra-headers-prefix", "X-Remote-Extra-").
		Set("proxy-client-cert-file", certFile).
		Set("proxy-client-key-file", keyFile)
	return nil
}

func (e *Env) applyPublisherRole(ctx context.Context) error {
	raw, err := os.ReadFile(filepath.Join(e.Root, "config", "rbac", "publisher_role.yaml"))
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(raw, role); err != nil {
		return fmt.Errorf("parse publisher role: %w", err)
	}
	return e.Client.Create(ctx, role)
}

// Stop stops the control plane.
func (e *Env) Stop() {
	if e.env != nil {
		_ = e.env.Stop()
	}
}

// Kubectl runs the kubectl built into bin/k8s against the control plane.
func (e *Env) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.env.BinaryAssetsDirectory, "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// PublisherToken creates a ServiceAccount allowed to publish in namespace
// (a RoleBinding to the herald-publisher ClusterRole) and returns a token
// for it with Herald's audience, as `kubectl create token` mints one.
func (e *Env) PublisherToken(ctx context.Context, namespace, serviceAccount string) (string, error) {
	if _, err := e.Kubectl(ctx, "create", "serviceaccount", serviceAccount, "-n", namespace); err != nil {
		return "", err
	}
	if _, err := e.Kubectl(ctx, "create", "rolebinding", serviceAccount+"-publisher", "-n", namespace,
		"--clusterrole=herald-publisher", "--serviceaccount="+namespace+":"+serviceAccount); err != nil {
		return "", err
	}
	out, err := e.Kubectl(ctx, "create", "token", serviceAccount, "-n", namespace, "--audience", heraldv1.DefaultAudience, "--duration=1h")
	return strings.TrimSpace(out), err
}

// Binaries are the paths of the built manager and dispatcher.
type Binaries struct{ Manager, Dispatcher string }

// Build compiles the manager and the dispatcher into dir, static and with
// -trimpath as the image and `make build` do: the tests run what ships, and
// those builds reuse this one's compiled packages.
func Build(ctx context.Context, root, dir string) (Binaries, error) {
	b := Binaries{Manager: filepath.Join(dir, "manager"), Dispatcher: filepath.Join(dir, "dispatcher")}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", dir+string(os.PathSeparator), "./cmd/manager", "./cmd/dispatcher")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return b, fmt.Errorf("go build: %w: %s", err, out)
	}
	return b, nil
}

// Process is a running manager or dispatcher with its output in a log file.
type Process struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
	mu   sync.Mutex
}

// StartProcess runs bin with args and KUBECONFIG pointing at the control
// plane; output goes to Dir/<name>.log (appended across restarts).
func (e *Env) StartProcess(name, bin string, args ...string) (*Process, error) {
	logPath := filepath.Join(e.Dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.Kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		_ = logFile.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to timeout before killing.
func (p *Process) Stop(timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not stop within %s after SIGTERM", p.Name, timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var exitErr *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exitErr) {
		return p.err
	}
	return nil
}

// Logs returns the process's output so far.
func (p *Process) Logs() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitHTTP polls url until it answers 200 or ctx ends.
func WaitHTTP(ctx context.Context, url string, p *Process) error {
	for {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited; its log:\n%s", p.Name, tail(p.Logs(), 40))
		}
		resp, err := httpGet(ctx, url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
