package ping

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/signature"
	"github.com/herald-dev/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.Stop()
	os.Exit(code)
}

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// event is one Event the fake recorder got.
type event struct{ typ, reason, note string }

type fakeRecorder struct {
	mu     sync.Mutex
	events []event
}

func (r *fakeRecorder) Eventf(_ runtime.Object, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{eventtype, reason, fmt.Sprintf(note, args...)})
}

func (r *fakeRecorder) all() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.events...)
}

type entries struct {
	mu  sync.Mutex
	all []deliverylog.Entry
}

func (e *entries) Record(x deliverylog.Entry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, x)
}

type endpoints map[string]*catalog.Endpoint

func (e endpoints) Endpoint(namespace, name string) (*catalog.Endpoint, bool) {
	ep, ok := e[catalog.Key(namespace, name)]
	return ep, ok
}

// A new herald.dev/ping value sends one signed herald.ping event naming
// the endpoint, and the outcome is an Event naming the value and a
// Delivery in the log. The same value never pings again, also for a new
// Pinger (a restarted dispatcher); a new value does, and a failure is a
// PingFailed Event with the status.
func TestPingOncePerValue(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testenv.Client(t)
	ns := testenv.Namespace(t, c, "ping")

	var status atomic.Int32
	status.Store(http.StatusNoContent)
	var mu sync.Mutex
	var bodies [][]byte
	verifier, err := signature.NewVerifier([]string{secret})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := verifier.Verify(r.Header, body); err != nil {
			t.Errorf("ping signature: %v", err)
		}
		mu.Lock()
		bodies = append(bodies, body)
		mu.Unlock()
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(bodies)
	}

	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hooks", Annotations: map[string]string{heraldv1.PingAnnotation: "one"}},
		Spec:       heraldv1.WebhookEndpointSpec{URL: srv.URL, AllowInsecureHTTP: true},
	}
	if err := c.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	cat := endpoints{catalog.Key(ns, "hooks"): {
		Namespace: ns, Name: "hooks", UID: ep.UID, Generation: 1, Spec: ep.Spec,
		Keys: []heraldv1.SigningKey{{Secret: secret, Since: time.Now().Add(-time.Hour)}},
	}}

	q, err := queue.Open(ctx, queue.Config{StoreDir: t.TempDir()}, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	log := &entries{}
	sender, err := delivery.NewManager(delivery.Options{Queue: q, Log: log, Logger: logr.Discard(),
		AllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sender.Stop(ctx) }()
	rec := &fakeRecorder{}
	var leading atomic.Bool
	leading.Store(true)
	newPinger := func() *Pinger {
		p, err := New(ctx, Options{Client: c, Catalog: cat, Sender: sender, Recorder: rec,
			JetStream: q.JetStream(), Leading: leading.Load, Logger: logr.Discard()})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	reconcile := func(p *Pinger) ctrl.Result {
		t.Helper()
		res, err := p.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ep)})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	p := newPinger()
	leading.Store(false)
	if res := reconcile(p); res.RequeueAfter == 0 || received() != 0 {
		t.Fatalf("without the lease: result %+v, %d pings; want a later look and none", res, received())
	}
	leading.Store(true)
	reconcile(p)
	if received() != 1 {
		t.Fatalf("%d pings received; want 1", received())
	}
	var ping struct {
		Type string `json:"type"`
		Data struct {
			Endpoint struct{ Namespace, Name string } `json:"endpoint"`
			Ping     string                           `json:"ping"`
		} `json:"data"`
	}
	if err := json.Unmarshal(bodies[0], &ping); err != nil {
		t.Fatal(err)
	}
	if ping.Type != heraldv1.PingEventType || ping.Data.Endpoint.Name != "hooks" || ping.Data.Endpoint.Namespace != ns || ping.Data.Ping != "one" {
		t.Errorf("ping body = %s; want type herald.ping naming the endpoint and the value", bodies[0])
	}
	evs := rec.all()
	if len(evs) != 1 || evs[0].reason != heraldv1.PingSucceededReason || evs[0].typ != "Normal" || !strings.Contains(evs[0].note, `"one"`) || !strings.Contains(evs[0].note, "HTTP 204") {
		t.Errorf("Events = %+v; want one Normal PingSucceeded naming the value and HTTP 204", evs)
	}
	if len(log.all) != 1 || log.all[0].Phase != deliveryv1.DeliverySucceeded || log.all[0].StatusCode != 204 || log.all[0].Event.Type != heraldv1.PingEventType {
		t.Errorf("delivery log = %+v; want one Succeeded herald.ping delivery", log.all)
	}

	// The same value, by the same Pinger or a restarted one: no ping.
	reconcile(p)
	reconcile(newPinger())
	if received() != 1 {
		t.Errorf("%d pings after reconciling the same value again; want 1", received())
	}

	// A new value pings again; a failing receiver gives PingFailed.
	status.Store(http.StatusInternalServerError)
	ep.Annotations[heraldv1.PingAnnotation] = "two"
	if err := c.Update(ctx, ep); err != nil {
		t.Fatal(err)
	}
	reconcile(p)
	evs = rec.all()
	if received() != 2 || len(evs) != 2 || evs[1].reason != heraldv1.PingFailedReason || evs[1].typ != "Warning" || !strings.Contains(evs[1].note, "HTTP 500") || !strings.Contains(evs[1].note, `"two"`) {
		t.Errorf("after a new value: %d pings, Events %+v; want a second ping and a Warning PingFailed with HTTP 500", received(), evs)
	}
	if last := log.all[len(log.all)-1]; last.Phase != deliveryv1.DeliveryDeadLettered || !strings.HasPrefix(last.DeadLetterReason, delivery.ReasonPing) {
		t.Errorf("failed ping logged as %+v; want DeadLettered with reason Ping: …", last)
	}
}
