package queue

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/nats-io/nats-server/v2/server"
)

// freeLoopbackPorts reserves n TCP ports on 127.0.0.1 and releases them for
// the caller to bind. Cluster routes must be known before the servers start,
// so the ports cannot be chosen by the servers themselves.
func freeLoopbackPorts(t *testing.T, n int) []int {
	t.Helper()
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("reserve loopback port: %v", err)
		}
		listeners = append(listeners, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// startCluster starts an n-node JetStream cluster on loopback, each node with
// its own store, and waits until its meta group has a leader and all peers.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	clusterPorts := freeLoopbackPorts(t, n)
	var routes []*url.URL
	for _, p := range clusterPorts {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
	}
	servers := make([]*server.Server, n)
	for i := range servers {
		opts := loopbackServerOptions(t)
		opts.ServerName = fmt.Sprintf("herald-test-%d", i+1)
		opts.Cluster = server.ClusterOpts{Name: "herald-test", Host: "127.0.0.1", Port: clusterPorts[i]}
		opts.Routes = routes
		servers[i] = startServer(t, opts)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		leaders, peers, current := 0, 0, 0
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leaders++
				peers = len(s.JetStreamClusterPeers()) // known to the leader only
			}
			if s.JetStreamIsCurrent() {
				current++
			}
		}
		if leaders == 1 && peers == n && current == n {
			return servers
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster not formed within 20s: %d meta leaders, leader sees %d of %d peers, %d nodes current",
				leaders, peers, n, current)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loopbackServerOptions configures a JetStream server with its own store,
// listening for clients on a free loopback port.
func loopbackServerOptions(t *testing.T) *server.Options {
	return &server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoSigs:    true,
		NoLog:     true,
	}
}

// startServer starts a server, waits until it accepts clients, and shuts it
// down when the test ends.
func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("create server %s: %v", opts.ServerName, err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatalf("server %s not ready for connections within 10s", opts.ServerName)
	}
	return srv
}

// TestClusterLosesNothingWhenANodeFails runs the queue in external mode
// against a three-node cluster with R3 streams, shuts down the node the
// queue is connected to, keeps publishing, and checks that every
// acknowledged event is consumed.
func TestClusterLosesNothingWhenANodeFails(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node JetStream cluster")
	}
	servers := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	q := openCluster(t, ctx, servers)

	info, err := q.events.Info(ctx)
	if err != nil {
		t.Fatalf("events stream info: %v", err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("events stream replicas = %d (cluster %+v), want an R3 stream", info.Config.Replicas, info.Cluster)
	}

	acked := map[string]bool{}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			id := strconv.Itoa(i)
			pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, _, err := q.PublishEvent(pctx, "ns", EventDedupID("ns", "cluster", id), []byte(id), nil)
			cancel()
			if err != nil {
				t.Fatalf("PublishEvent %s: %v", id, err)
			}
			acked[id] = true
		}
	}
	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{AckWait: 2 * time.Second})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	publish(0, 100)

	consumed := map[string]bool{}
	consume := func(until func() bool, within time.Duration) {
		deadline := time.Now().Add(within)
		for !until() {
			if time.Now().After(deadline) {
				t.Fatalf("consumed %d of %d acknowledged events within %s", len(consumed), len(acked), within)
			}
			fctx, cancel := context.WithTimeout(ctx, time.Second)
			msgs, err := c.Fetch(fctx, 50)
			cancel()
			if err != nil {
				t.Logf("Fetch (retrying): %v", err)
			}
			for _, m := range msgs {
				// A failed ack means redelivery: the event is counted
				// when it comes back.
				if err := m.Ack(ctx); err != nil {
					t.Logf("Ack (event will be redelivered): %v", err)
					continue
				}
				consumed[string(m.Data)] = true
			}
		}
	}
	consume(func() bool { return len(consumed) >= 40 }, 15*time.Second)

	// Shut down the node the queue is connected to: the client must fail
	// over to another URL and the streams to the remaining quorum.
	connected := q.nc.ConnectedServerName()
	var victim *server.Server
	for _, s := range servers {
		if s.Name() == connected {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("connected server %q is not one of the cluster's", connected)
	}
	t.Logf("shutting down %s", connected)
	victim.Shutdown()
	victim.WaitForShutdown()

	publish(100, 200)
	if now := q.nc.ConnectedServerName(); now == connected {
		t.Fatalf("still connected to %s after it shut down", now)
	}
	consume(func() bool { return len(consumed) >= len(acked) }, 30*time.Second)
	for id := range acked {
		if !consumed[id] {
			t.Errorf("acknowledged event %s was never consumed", id)
		}
	}
}

// openCluster opens the queue in external mode against servers, and closes
// it when the test ends.
func openCluster(t *testing.T, ctx context.Context, servers []*server.Server) *Queue {
	t.Helper()
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	q, err := Open(ctx, Config{NATSURL: strings.Join(urls, ",")}, testr.NewWithOptions(t, testr.Options{Verbosity: 1}))
	if err != nil {
		t.Fatalf("Open against the cluster: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}
