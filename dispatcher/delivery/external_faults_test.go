package delivery

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// Fault tests of external mode: the NATS servers run as child processes of
// the test (the test binary re-executed), so a node can be killed with
// SIGKILL exactly as a crashed pod would be, and restarted on its store.
// Everything listens on 127.0.0.1.

// natsNodeEnv carries a natsNodeConfig to a child process, which TestMain
// then runs as a NATS node (runNATSNode) instead of the tests.
const natsNodeEnv = "HERALD_DELIVERY_NATS_NODE"

type natsNodeConfig struct {
	Name        string
	Port        int
	StoreDir    string
	ClusterPort int      // 0: no cluster
	Routes      []string // nats-route:// URLs of every cluster node
}

// natsNode is a nats-server with JetStream in a child process.
type natsNode struct {
	cfg   natsNodeConfig
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

func (n *natsNode) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.cfg.Port) }

// startNATSNode starts a node and waits until it accepts connections. The
// node stops when the test ends (or when the test process dies: it exits
// when its stdin closes).
func startNATSNode(t *testing.T, cfg natsNodeConfig) *natsNode {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), natsNodeEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start NATS node %s: %v", cfg.Name, err)
	}
	n := &natsNode{cfg: cfg, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		lines := bufio.NewScanner(stdout)
		sent := false
		for lines.Scan() {
			if !sent && lines.Text() == "nats node ready" {
				ready <- true
				sent = true
			}
		}
		if !sent {
			ready <- false
		}
		_ = cmd.Wait()
		close(n.done)
	}()
	t.Cleanup(func() { n.stop(t) })
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("NATS node %s exited before it was ready", cfg.Name)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("NATS node %s not ready within 20s", cfg.Name)
	}
	return n
}

// kill sends SIGKILL and waits until the process is gone.
func (n *natsNode) kill(t *testing.T) {
	t.Helper()
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("NATS node %s did not die", n.cfg.Name)
	}
}

// stop shuts the node down cleanly (its stdin closes), killing it after a
// grace period.
func (n *natsNode) stop(t *testing.T) {
	_ = n.stdin.Close()
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.done
	}
}

// runNATSNode is the NATS server process of the external-mode fault tests
// (TestMain runs it when natsNodeEnv is set): it serves the node that raw
// (a JSON natsNodeConfig) describes until its stdin closes, and returns the
// exit code.
func runNATSNode(raw string) int {
	var cfg natsNodeConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "nats node:", err)
		return 2
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       "127.0.0.1",
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	if cfg.ClusterPort != 0 {
		opts.Cluster = server.ClusterOpts{Name: "herald-delivery-test", Host: "127.0.0.1", Port: cfg.ClusterPort}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				fmt.Fprintln(os.Stderr, "nats node:", err)
				return 2
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats node:", err)
		return 2
	}
	srv.Start()
	if !srv.ReadyForConnections(15 * time.Second) {
		fmt.Fprintln(os.Stderr, "nats node: not ready")
		return 2
	}
	fmt.Println("nats node ready")
	// Until the parent closes stdin (or dies), bounded all the same.
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stdinClosed:
	case <-time.After(10 * time.Minute):
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	return 0
}

func loopbackPorts(t *testing.T, n int) []int {
	t.Helper()
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// ackedSet is the set of deliveries JetStream acknowledged to the
// publisher: the ones that must reach the receiver.
type ackedSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (a *ackedSet) add(id string) {
	a.mu.Lock()
	a.ids[id] = true
	a.mu.Unlock()
}

func (a *ackedSet) missing(got map[string]bool) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for id := range a.ids {
		if !got[id] {
			out = append(out, id)
		}
	}
	return out
}

func (a *ackedSet) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ids)
}

// publishAcked publishes delivery id and records it when JetStream
// acknowledges it; an unacknowledged publish (the queue is down) is not
// the publisher's guarantee and is not recorded.
func publishAcked(q *queue.Queue, acked *ackedSet, namespace, endpoint, id string, within time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	header := queue.Header{}
	header.Set(queue.HeaderWebhookID, queue.WebhookID(namespace, "/orders", id))
	header.Set(queue.HeaderIngestedAt, time.Now().UTC().Format(time.RFC3339Nano))
	dedup := queue.DeliveryDedupID(queue.EventDedupID(namespace, "/orders", id), namespace, endpoint)
	if _, _, err := q.PublishDelivery(ctx, namespace, endpoint, dedup, testEvent(id), header); err != nil {
		return false
	}
	acked.add(queue.WebhookID(namespace, "/orders", id))
	return true
}

// receivedIDs returns the webhook-ids a receiver got.
func receivedIDs(rc *receiver) map[string]bool {
	got := map[string]bool{}
	for _, r := range rc.received() {
		got[r.Header.Get("webhook-id")] = true
	}
	return got
}

// waitAllDelivered waits until every acknowledged delivery reached rc. A
// delivery whose acknowledgement was lost with the connection comes back
// after its AckWait (a minute), hence the long bound; normally this
// returns within seconds.
func waitAllDelivered(t *testing.T, rc *receiver, acked *ackedSet) {
	t.Helper()
	deadline := time.Now().Add(100 * time.Second)
	for {
		missing := acked.missing(receivedIDs(rc))
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged deliveries never reached the receiver, e.g. %v", len(missing), acked.len(), missing[:min(5, len(missing))])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func openExternal(t *testing.T, urls []string, replicas int) *queue.Queue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	q, err := queue.Open(ctx, queue.Config{NATSURL: strings.Join(urls, ","), Replicas: replicas}, logr.Discard())
	if err != nil {
		t.Fatalf("queue.Open(%v): %v", urls, err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

// TestExternalNATSKilledAndRestartedLosesNothing: in external mode the NATS
// server is killed with SIGKILL while deliveries flow, stays away for a
// while (publishes fail, delivery waits), and comes back on its store.
// Every delivery JetStream acknowledged reaches the receiver.
func TestExternalNATSKilledAndRestartedLosesNothing(t *testing.T) {
	ports := loopbackPorts(t, 1)
	cfg := natsNodeConfig{Name: "herald-external", Port: ports[0], StoreDir: t.TempDir()}
	node := startNATSNode(t, cfg)
	q := openExternal(t, []string{node.url()}, 1)

	// A slow receiver keeps deliveries in flight when the server dies.
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		time.Sleep(20 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	})
	m, _, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.MaxInFlight = new(int32(4))
	m.Sync([]*catalog.Endpoint{ep})

	acked := &ackedSet{ids: map[string]bool{}}
	for i := range 60 {
		if !publishAcked(q, acked, "shop", "orders", fmt.Sprintf("before-%d", i), 5*time.Second) {
			t.Fatalf("publish before the outage failed")
		}
	}
	waitFor(t, 20*time.Second, "the first deliveries", func() bool { return rc.count() >= 10 })

	node.kill(t)
	t.Logf("NATS killed after %d requests", rc.count())
	// During the outage publishes are not acknowledged (and not counted).
	for i := range 5 {
		if publishAcked(q, acked, "shop", "orders", fmt.Sprintf("during-%d", i), 300*time.Millisecond) {
			t.Errorf("a publish was acknowledged with the server down")
		}
	}
	time.Sleep(2 * time.Second)

	startNATSNode(t, cfg)
	waitFor(t, 30*time.Second, "the queue to reconnect", q.Connected)
	for i := range 20 {
		if !publishAcked(q, acked, "shop", "orders", fmt.Sprintf("after-%d", i), 10*time.Second) {
			t.Fatalf("publish after the restart failed")
		}
	}
	waitAllDelivered(t, rc, acked)
	t.Logf("all %d acknowledged deliveries arrived (%d requests in all)", acked.len(), rc.count())
}

// TestClusterNodeKilledDuringDeliveryLosesNothing: three NATS nodes, R3
// streams; the node leading the deliveries stream is killed with SIGKILL
// while deliveries flow and publishes continue. Every acknowledged delivery
// reaches the receiver.
func TestClusterNodeKilledDuringDeliveryLosesNothing(t *testing.T) {
	ports := loopbackPorts(t, 6)
	var routes []string
	for _, p := range ports[3:] {
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(p))
	}
	var nodes []*natsNode
	var urls []string
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 3 {
		cfg := natsNodeConfig{Name: fmt.Sprintf("herald-node-%d", i+1), Port: ports[i], StoreDir: t.TempDir(), ClusterPort: ports[3+i], Routes: routes}
		wg.Go(func() {
			n := startNATSNode(t, cfg)
			mu.Lock()
			nodes = append(nodes, n)
			mu.Unlock()
		})
		urls = append(urls, "nats://127.0.0.1:"+strconv.Itoa(ports[i]))
	}
	wg.Wait()
	if len(nodes) != 3 {
		t.Fatal("cluster did not start")
	}
	q := openExternal(t, urls, 3)

	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		time.Sleep(10 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	})
	m, _, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.MaxInFlight = new(int32(4))
	m.Sync([]*catalog.Endpoint{ep})

	acked := &ackedSet{ids: map[string]bool{}}
	for i := range 80 {
		if !publishAcked(q, acked, "shop", "orders", fmt.Sprintf("before-%d", i), 10*time.Second) {
			t.Fatalf("publish before the kill failed")
		}
	}
	waitFor(t, 30*time.Second, "the first deliveries", func() bool { return rc.count() >= 20 })

	leader := streamLeader(t, q, nodes)
	leader.kill(t)
	t.Logf("killed %s (deliveries stream leader) after %d requests", leader.cfg.Name, rc.count())

	// Publishing goes on through the remaining quorum; a publish caught in
	// the leader election may fail and is retried as a publisher would.
	for i := range 80 {
		id := fmt.Sprintf("after-%d", i)
		deadline := time.Now().Add(30 * time.Second)
		for !publishAcked(q, acked, "shop", "orders", id, 3*time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("publish %s not acknowledged within 30s of the kill", id)
			}
		}
	}
	waitAllDelivered(t, rc, acked)
	t.Logf("all %d acknowledged deliveries arrived (%d requests in all)", acked.len(), rc.count())
}

// streamLeader finds the node leading HERALD_DELIVERIES from the stream's
// cluster information.
func streamLeader(t *testing.T, q *queue.Queue, nodes []*natsNode) *natsNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := q.JetStream().Stream(ctx, queue.DeliveriesStream)
	if err != nil {
		t.Fatalf("deliveries stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("deliveries stream info: %v", err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil {
		t.Fatalf("deliveries stream has %d replicas (%+v), want R3", info.Config.Replicas, info.Cluster)
	}
	for _, n := range nodes {
		if n.cfg.Name == info.Cluster.Leader {
			return n
		}
	}
	t.Fatalf("stream leader %q is not one of the nodes", info.Cluster.Leader)
	return nil
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
