package e2e

// Helpers for the fault tests (faults_test.go) and the secret-leak tests
// (secrets_test.go): a Herald of their own, whose manager and dispatcher run
// as users holding only Herald's own ClusterRoles, whose API server can be
// stopped and started again, and receivers that misbehave on purpose.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

// Least-privilege identities of the isolated Herald.
const (
	faultManagerUser    = "herald-manager-e2e"
	faultDispatcherUser = "herald-dispatcher-e2e"
)

// faultHerald is a Herald of its own for tests that break things (stop the
// API server, stop the manager, delete Secrets) without disturbing the
// shared one. Its manager runs as a user bound only to the roles of
// config/rbac/role.yaml and its dispatcher as a user bound only to those of
// config/rbac/dispatcher/role.yaml (each a ClusterRole and a Role in
// herald-system, generated from kubebuilder markers), so every scenario
// also checks that those roles suffice. Both log at debug level,
// which the secret-leak scan then reads.
type faultHerald struct {
	*Herald
	managerArgs []string
	managerURL  string
	apiServer   *apiServerControl
	// gate is the manager's and the dispatcher's way to the API server.
	gate *apiServerGate
	// roles are the least-privilege users' ClusterRoles and Roles.
	roles map[string][]grant
}

// startFaultHerald brings up the isolated Herald with already built
// binaries; it is stopped when t ends, and its directory kept (and named)
// when t failed.
func startFaultHerald(t *testing.T, bins Binaries) *faultHerald {
	t.Helper()
	if bins.Manager == "" || bins.Dispatcher == "" {
		t.Fatal("no manager and dispatcher binaries: build them first (TestMain does)")
	}
	dir, err := os.MkdirTemp("", "herald-faults-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env, err := StartControlPlane(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	h := &faultHerald{Herald: &Herald{Env: env, Bins: bins}, roles: map[string][]grant{}}
	h.gate, err = startAPIServerGate(t, net.JoinHostPort(env.env.ControlPlane.APIServer.SecureServing.Address, env.env.ControlPlane.APIServer.SecureServing.Port))
	if err != nil {
		env.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range []*Process{h.Dispatcher, h.Manager} {
			if p != nil {
				_ = p.Stop(20 * time.Second)
			}
		}
		if h.apiServer != nil {
			h.apiServer.stopRestarted()
		}
		env.Stop()
		if t.Failed() {
			t.Logf("fault-test logs kept in %s", dir)
			for _, p := range []*Process{h.Manager, h.Dispatcher} {
				if p != nil {
					t.Logf("---- %s (last lines)\n%s", p.Name, tail(p.Logs(), 80))
				}
			}
			return
		}
		_ = os.RemoveAll(dir)
	})

	managerKubeconfig, err := h.leastPrivilegeKubeconfig(ctx, faultManagerUser,
		generatedRoles(t, filepath.Join(env.Root, "config", "rbac", "role.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	dispatcherKubeconfig, err := h.leastPrivilegeKubeconfig(ctx, faultDispatcherUser,
		generatedRoles(t, filepath.Join(env.Root, "config", "rbac", "dispatcher", "role.yaml")))
	if err != nil {
		t.Fatal(err)
	}

	managerHealth, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	h.managerURL = fmt.Sprintf("http://127.0.0.1:%d/readyz", managerHealth)
	h.managerArgs = []string{
		"--kubeconfig=" + managerKubeconfig,
		"--manage-dispatcher=false", "--metrics-bind-address=0",
		"--health-probe-bind-address=127.0.0.1:" + strconv.Itoa(managerHealth),
		"--zap-log-level=debug", LocalIngestHostsFlag,
	}
	if err := h.StartManager(ctx); err != nil {
		t.Fatal(err)
	}

	ingestPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	healthPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tlsArgs, err := h.UseIngestCertificate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.IngestURL = fmt.Sprintf("https://127.0.0.1:%d", ingestPort)
	h.healthURL = fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort)
	h.dispatcherArgs = append([]string{
		"--kubeconfig=" + dispatcherKubeconfig,
		"--store-dir=" + filepath.Join(dir, "jetstream"),
		"--ingest-addr=127.0.0.1:" + strconv.Itoa(ingestPort),
		"--delivery-api-addr=0",
		"--health-addr=127.0.0.1:" + strconv.Itoa(healthPort),
		"--metrics-addr=0",
		"--allowed-cidrs=127.0.0.0/8,::1/128",
		"--status-interval=500ms",
		"--drain-timeout=10s",
		"--pod-name=dispatcher-faults",
		"--log-level=debug",
	}, tlsArgs...)
	if err := h.StartDispatcher(ctx); err != nil {
		t.Fatal(err)
	}
	if h.apiServer, err = findAPIServer(env); err != nil {
		t.Fatal(err)
	}
	return h
}

// StartManager (re)starts the manager and waits until it is ready.
func (h *faultHerald) StartManager(ctx context.Context) error {
	p, err := h.StartProcess("manager", h.Bins.Manager, h.managerArgs...)
	if err != nil {
		return err
	}
	h.Manager = p
	return waitReady(ctx, h.managerURL, p)
}

// grant is what one role of a least-privilege user allows: its rules,
// cluster-wide or in one namespace.
type grant struct {
	namespace string
	rules     []rbacv1.PolicyRule
}

// generatedRoles reads a role.yaml that controller-gen generated from
// kubebuilder markers: a ClusterRole and, for markers with a namespace, a
// Role there.
func generatedRoles(t *testing.T, path string) []client.Object {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var roles []client.Object
	for doc := range bytes.SplitSeq(raw, []byte("\n---")) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("parse %s: %v", path, err)
		}
		var role client.Object
		switch meta.Kind {
		case "ClusterRole":
			role = &rbacv1.ClusterRole{}
		case "Role":
			role = &rbacv1.Role{}
		default:
			continue
		}
		if err := yaml.Unmarshal(doc, role); err != nil {
			t.Fatalf("parse %s: %v", path, err)
		}
		roles = append(roles, role)
	}
	if len(roles) == 0 {
		t.Fatalf("%s holds no role", path)
	}
	return roles
}

// leastPrivilegeKubeconfig creates roles (ClusterRoles and Roles, renamed
// after user), binds each to a new user and returns a kubeconfig file
// authenticating as that user (a client certificate). The kubeconfig
// reaches the API server through h.gate.
func (h *faultHerald) leastPrivilegeKubeconfig(ctx context.Context, user string, roles []client.Object) (string, error) {
	for _, role := range roles {
		role = role.DeepCopyObject().(client.Object)
		role.SetName(user)
		role.SetResourceVersion("")
		role.SetUID("")
		if err := h.Client.Create(ctx, role); err != nil {
			return "", fmt.Errorf("create %T %s: %w", role, role.GetName(), err)
		}
		subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
		var binding client.Object
		switch role := role.(type) {
		case *rbacv1.ClusterRole:
			h.roles[user] = append(h.roles[user], grant{rules: role.Rules})
			binding = &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: user},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
				Subjects:   subjects,
			}
		case *rbacv1.Role:
			h.roles[user] = append(h.roles[user], grant{namespace: role.Namespace, rules: role.Rules})
			binding = &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Namespace: role.Namespace, Name: user},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
				Subjects:   subjects,
			}
		}
		if err := h.Client.Create(ctx, binding); err != nil {
			return "", fmt.Errorf("bind %s: %w", role.GetName(), err)
		}
	}
	u, err := h.env.AddUser(envtest.User{Name: user}, nil)
	if err != nil {
		return "", fmt.Errorf("add user %s: %w", user, err)
	}
	raw, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return "", fmt.Errorf("parse kubeconfig of %s: %w", user, err)
	}
	for _, cluster := range kc.Clusters {
		// The serving certificate names 127.0.0.1, whatever the port.
		cluster.Server = "https://" + h.gate.Addr()
	}
	if raw, err = clientcmd.Write(*kc); err != nil {
		return "", err
	}
	path := filepath.Join(h.Dir, user+".kubeconfig")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return "", err
	}
	// The RBAC authorizer learns about new bindings through an informer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := h.Kubectl(ctx, "auth", "can-i", "list", "webhookendpoints.herald.dev", "--all-namespaces", "--as="+user)
		if err == nil && strings.TrimSpace(out) == "yes" {
			return path, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s cannot list webhookendpoints 10s after the binding: %s %v", user, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// apiServerControl stops the control plane's kube-apiserver and starts it
// again with exactly the same command line: same port, certificates,
// service account keys and etcd, so clients' kubeconfigs and tokens stay
// valid across the restart. envtest cannot do that itself (its Stop deletes
// the certificate directory).
type apiServerControl struct {
	pid       int
	argv      []string
	logPath   string
	restarted *exec.Cmd
	exited    chan struct{}
}

// findAPIServer finds the kube-apiserver process envtest started for env:
// a child of this process whose command line serves env's secure port.
func findAPIServer(env *Env) (*apiServerControl, error) {
	port := env.env.ControlPlane.APIServer.SecureServing.Port
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if filepath.Base(argv[0]) != "kube-apiserver" {
			continue
		}
		for _, a := range argv[1:] {
			if a == "--secure-port="+port {
				return &apiServerControl{pid: pid, argv: argv, logPath: filepath.Join(env.Dir, "kube-apiserver-restarted.log")}, nil
			}
		}
	}
	return nil, fmt.Errorf("no kube-apiserver child process serving port %s", port)
}

// Stop sends SIGTERM to the running API server and waits until it is gone;
// an API server still draining its watches after 10s is killed.
func (a *apiServerControl) Stop() error {
	if a.restarted != nil {
		a.stopRestarted()
		return nil
	}
	if err := syscall.Kill(a.pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal kube-apiserver: %w", err)
	}
	killAt := time.Now().Add(10 * time.Second)
	deadline := killAt.Add(20 * time.Second)
	for !processGone(a.pid) {
		now := time.Now()
		if now.After(deadline) {
			return errors.New("kube-apiserver did not exit within 30s")
		}
		if now.After(killAt) {
			_ = syscall.Kill(a.pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// processGone reports whether pid has exited (reaped, or a zombie waiting
// for envtest to reap it).
func processGone(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}

// Start runs the API server again with its original command line and waits
// until ready succeeds.
func (a *apiServerControl) Start(ctx context.Context, ready func(context.Context) error) error {
	logFile, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.argv[0], a.argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("restart kube-apiserver: %w", err)
	}
	a.restarted, a.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(a.exited)
	}()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		if err := ready(ctx); err == nil {
			return nil
		}
		select {
		case <-a.exited:
			return fmt.Errorf("restarted kube-apiserver exited; see %s", a.logPath)
		case <-ctx.Done():
			return fmt.Errorf("restarted kube-apiserver not ready: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stopRestarted stops an API server this helper started.
func (a *apiServerControl) stopRestarted() {
	if a.restarted == nil {
		return
	}
	_ = a.restarted.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		_ = a.restarted.Process.Signal(syscall.SIGKILL)
		<-a.exited
	}
	a.restarted = nil
}

// StopAPIServer closes the gate, so that the manager and the dispatcher
// cannot reach the API server, and stops the API server.
func (h *faultHerald) StopAPIServer() error {
	h.gate.Close()
	return h.apiServer.Stop()
}

// StartAPIServer starts the API server again and opens the gate once it is
// ready (apiServerReady). A restarted API server accepts requests before
// its RBAC authorizer has loaded the bindings and refuses them meanwhile;
// a real control plane's load balancer or kubernetes Service sends clients
// to an API server only once its readiness check passes, and the gate does
// the same, so that any refusal the manager or the dispatcher meets is a
// role that does not suffice.
func (h *faultHerald) StartAPIServer(ctx context.Context) error {
	if err := h.apiServer.Start(ctx, h.apiServerReady); err != nil {
		return err
	}
	h.gate.Open()
	return nil
}

// apiServerReady is a positive check that the API server serves the
// least-privilege users as it should: /readyz passes (storage, informers
// and post-start hooks such as the RBAC bootstrap), and the RBAC
// authorizer allows every verb on every resource of their roles,
// which it does only once it has loaded their bindings.
func (h *faultHerald) apiServerReady(ctx context.Context) error {
	clientset, err := kubernetes.NewForConfig(h.env.Config)
	if err != nil {
		return err
	}
	if _, err := clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return fmt.Errorf("readyz: %w", err)
	}
	for user, grants := range h.roles {
		for _, g := range grants {
			for _, rule := range g.rules {
				for _, attrs := range ruleAttributes(rule) {
					attrs.Namespace = g.namespace
					sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: attrs}}
					if err := h.Client.Create(ctx, sar); err != nil {
						return fmt.Errorf("review %s: %w", user, err)
					}
					if !sar.Status.Allowed {
						return fmt.Errorf("%s may not %s %s.%s/%s in %q yet: %s", user, attrs.Verb, attrs.Resource, attrs.Group, attrs.Subresource,
							attrs.Namespace, sar.Status.Reason)
					}
				}
			}
		}
	}
	return nil
}

// ruleAttributes lists every request a resource rule allows; a rule
// limited to resourceNames allows them on those names only (non-resource
// rules, which Herald's roles do not have, are left out).
func ruleAttributes(rule rbacv1.PolicyRule) []*authorizationv1.ResourceAttributes {
	names := rule.ResourceNames
	if len(names) == 0 {
		names = []string{""}
	}
	var out []*authorizationv1.ResourceAttributes
	for _, group := range rule.APIGroups {
		for _, resource := range rule.Resources {
			resource, subresource, _ := strings.Cut(resource, "/")
			for _, verb := range rule.Verbs {
				for _, name := range names {
					out = append(out, &authorizationv1.ResourceAttributes{Group: group, Resource: resource, Subresource: subresource, Verb: verb, Name: name})
				}
			}
		}
	}
	return out
}

// apiServerGate is a TCP proxy in front of the API server for the manager
// and the dispatcher. TLS passes through it untouched. While closed it
// refuses new connections, as a load balancer does in front of an API
// server that is not ready.
type apiServerGate struct {
	l       net.Listener
	backend string
	open    atomic.Bool
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

// startAPIServerGate opens a gate to backend (host:port) on loopback; it
// is open from the start and closed when t ends.
func startAPIServerGate(t *testing.T, backend string) (*apiServerGate, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &apiServerGate{l: l, backend: backend, conns: map[net.Conn]struct{}{}}
	g.open.Store(true)
	go g.serve()
	t.Cleanup(func() {
		_ = l.Close()
		g.Close()
	})
	return g, nil
}

// Addr is the gate's host:port.
func (g *apiServerGate) Addr() string { return g.l.Addr().String() }

// Open lets new connections through.
func (g *apiServerGate) Open() { g.open.Store(true) }

// Close refuses new connections and ends the open ones.
func (g *apiServerGate) Close() {
	g.open.Store(false)
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		_ = c.Close()
	}
}

func (g *apiServerGate) serve() {
	for {
		in, err := g.l.Accept()
		if err != nil {
			return
		}
		go g.pass(in)
	}
}

func (g *apiServerGate) pass(in net.Conn) {
	if !g.open.Load() {
		_ = in.Close()
		return
	}
	out, err := net.DialTimeout("tcp", g.backend, 5*time.Second)
	if err != nil {
		_ = in.Close()
		return
	}
	if !g.track(in, out) {
		return
	}
	done := make(chan struct{}, 2)
	for _, pair := range [][2]net.Conn{{in, out}, {out, in}} {
		go func() {
			_, _ = io.Copy(pair[0], pair[1])
			done <- struct{}{}
		}()
	}
	<-done
	g.untrack(in, out)
}

// track registers a connection pair unless the gate closed meanwhile.
func (g *apiServerGate) track(conns ...net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.open.Load() {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		g.conns[c] = struct{}{}
	}
	return true
}

func (g *apiServerGate) untrack(conns ...net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(g.conns, c)
	}
}

// logLines returns the JSON log entries of p, from byte offset on, that
// match: a field of the entry for each key of match, with that value.
func logLines(p *Process, offset int, match map[string]string) []string {
	logs := p.Logs()
	if offset > len(logs) {
		offset = len(logs)
	}
	var out []string
	for _, line := range strings.Split(logs[offset:], "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		matches := true
		for k, v := range match {
			if s, _ := entry[k].(string); s != v {
				matches = false
				break
			}
		}
		if matches {
			out = append(out, line)
		}
	}
	return out
}

// rbacRefusals returns the log lines of p from byte offset on that report a
// request the API server's authorizer refused.
func rbacRefusals(p *Process, offset int) []string {
	logs := p.Logs()
	if offset > len(logs) {
		offset = len(logs)
	}
	var out []string
	for _, line := range strings.Split(logs[offset:], "\n") {
		if strings.Contains(line, "forbidden") || strings.Contains(line, "is not allowed") {
			out = append(out, line)
		}
	}
	return out
}

// gatedReceiver is a verifying Receiver behind a switch: while held,
// requests wait (bounded by the request's context); refusing answers 503.
type gatedReceiver struct {
	*Receiver
	held    atomic.Bool
	refuse  atomic.Bool
	release chan struct{}
	mu      sync.Mutex
	srv     *http.Server
}

func startGatedReceiver(t *testing.T) *gatedReceiver {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedReceiver{
		Receiver: &Receiver{URL: "http://" + l.Addr().String() + "/webhooks", byID: map[string][]Delivery{}},
		release:  make(chan struct{}),
	}
	g.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.held.Load() {
			g.mu.Lock()
			release := g.release
			g.mu.Unlock()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			case <-time.After(time.Minute):
			}
		}
		if g.refuse.Load() {
			http.Error(w, "receiver refuses for now", http.StatusServiceUnavailable)
			return
		}
		g.Receiver.ServeHTTP(w, r)
	})}
	go func() { _ = g.srv.Serve(l) }()
	t.Cleanup(func() {
		g.Open()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = g.srv.Shutdown(ctx)
	})
	return g
}

// Hold makes requests wait until Open.
func (g *gatedReceiver) Hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.held.Load() {
		g.release = make(chan struct{})
		g.held.Store(true)
	}
}

// Open lets waiting and future requests through.
func (g *gatedReceiver) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held.Load() {
		g.held.Store(false)
		close(g.release)
	}
}

// hogReceiver answers 200 and then a body that never ends (or claims a
// size it never delivers), counting what it manages to write before the
// client goes away.
type hogReceiver struct {
	URL      string
	requests atomic.Int64
	written  atomic.Int64
	maxOne   atomic.Int64
	srv      *http.Server
}

// startHogReceiver serves on loopback: with declaredLength > 0 the answer
// declares that Content-Length; otherwise it is chunked and endless.
func startHogReceiver(t *testing.T, declaredLength int64) *hogReceiver {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hogReceiver{URL: "http://" + l.Addr().String() + "/webhooks"}
	chunk := bytes.Repeat([]byte("herald-e2e-hog "), 4096) // 60 KiB
	h.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h.requests.Add(1)
		if declaredLength > 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(declaredLength, 10))
		}
		w.WriteHeader(http.StatusOK)
		var n int64
		defer func() {
			h.written.Add(n)
			for {
				old := h.maxOne.Load()
				if n <= old || h.maxOne.CompareAndSwap(old, n) {
					return
				}
			}
		}()
		// Bounded: a client that read everything would stop us at 1 GiB.
		for n < 1<<30 {
			m, err := w.Write(chunk)
			n += int64(m)
			if err != nil {
				return
			}
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
	})}
	go func() { _ = h.srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			_ = h.srv.Close()
		}
	})
	return h
}

// startUntrustedTLSReceiver serves HTTPS on loopback with a self-signed
// certificate no trust store knows; handled counts requests that got past
// the handshake.
func startUntrustedTLSReceiver(t *testing.T) (url string, handled *atomic.Int64) {
	t.Helper()
	handled = &atomic.Int64{}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := selfSignedCertificate()
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			handled.Add(1)
			w.WriteHeader(http.StatusNoContent)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ErrorLog:  quietServerLog(),
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + l.Addr().String() + "/webhooks", handled
}

// processMemory reads a process's resident set: now and its peak.
func processMemory(pid int) (rss, peak int64, err error) {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) < 1 {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM for pid %d", pid)
	}
	return rss, peak, nil
}

// listEventsJSON returns every Event of the control plane (core and
// events.k8s.io, all namespaces) as JSON, for scanning.
func (h *Herald) listEventsJSON(ctx context.Context) (string, error) {
	core := &corev1.EventList{}
	if err := h.Client.List(ctx, core); err != nil {
		return "", err
	}
	out, err := h.Kubectl(ctx, "get", "events.events.k8s.io", "--all-namespaces", "-o", "json")
	if err != nil {
		return "", err
	}
	raw, err := yaml.Marshal(core)
	if err != nil {
		return "", err
	}
	return string(raw) + "\n" + out, nil
}

// selfSignedCertificate is a throw-away certificate for 127.0.0.1 signed by
// itself.
func selfSignedCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "untrusted receiver"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// quietServerLog swallows the TLS handshake errors a test provokes.
func quietServerLog() *log.Logger { return log.New(io.Discard, "", 0) }
