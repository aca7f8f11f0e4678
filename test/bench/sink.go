package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// Behaviour is how a sink endpoint answers.
type Behaviour int

const (
	// Healthy verifies the signature, records the delivery and answers 204.
	Healthy Behaviour = iota
	// Failing answers 500 to everything, at once.
	Failing
	// Slow verifies and records like Healthy, but answers only after
	// SlowDelay.
	Slow
)

// maxRuns bounds the runs a sink tells apart; the harness numbers runs
// from 1.
const maxRuns = 1024

// Sink is the receiver of every benchmark delivery: one HTTP server on
// loopback with one path per endpoint (/e/<index>), each with its own
// signing secret. Healthy endpoints verify every request's Standard
// Webhooks signature with Herald's signature package, as a user's Go
// receiver would, and record the delivery in the ledger of its run.
type Sink struct {
	// SlowDelay is how long Slow endpoints take to answer.
	SlowDelay time.Duration

	clock    *Clock
	srv      *http.Server
	base     string
	mu       sync.RWMutex
	eps      []*sinkEndpoint
	runs     [maxRuns]atomic.Pointer[Ledger]
	requests atomic.Int64
	orphans  atomic.Int64 // verified deliveries of runs without a ledger
}

type sinkEndpoint struct {
	behaviour Behaviour
	// ledgerEndpoint is the endpoint's number in its run's ledger; -1 for
	// endpoints the ledger does not track.
	ledgerEndpoint int
	verifier       atomic.Pointer[signature.Verifier]
	requests       atomic.Int64
}

// StartSink listens on 127.0.0.1 on a free port.
func StartSink(clock *Clock) (*Sink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sink listen: %w", err)
	}
	s := &Sink{clock: clock, base: "http://" + l.Addr().String(), SlowDelay: time.Second}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// AddEndpoint adds an endpoint answering with behaviour, recorded in the
// ledgers as ledgerEndpoint (-1: not recorded), and returns its index and
// URL.
func (s *Sink) AddEndpoint(behaviour Behaviour, ledgerEndpoint int) (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := len(s.eps)
	s.eps = append(s.eps, &sinkEndpoint{behaviour: behaviour, ledgerEndpoint: ledgerEndpoint})
	return i, fmt.Sprintf("%s/e/%d", s.base, i)
}

// SetSecret sets the keys endpoint i verifies with.
func (s *Sink) SetSecret(i int, keys ...string) error {
	v, err := signature.NewVerifier(keys)
	if err != nil {
		return err
	}
	s.endpoint(i).verifier.Store(v)
	return nil
}

// Requests returns how many requests endpoint i answered.
func (s *Sink) Requests(i int) int64 { return s.endpoint(i).requests.Load() }

// Orphans is the number of verified deliveries whose run had no ledger.
func (s *Sink) Orphans() int64 { return s.orphans.Load() }

func (s *Sink) endpoint(i int) *sinkEndpoint {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if i < 0 || i >= len(s.eps) {
		return nil
	}
	return s.eps[i]
}

// Track makes the sink record deliveries of l.Run in l.
func (s *Sink) Track(l *Ledger) { s.runs[l.Run%maxRuns].Store(l) }

func (s *Sink) ledger(run int) *Ledger {
	if run <= 0 {
		return nil
	}
	l := s.runs[run%maxRuns].Load()
	if l == nil || l.Run != run {
		return nil
	}
	return l
}

// ServeHTTP answers a delivery.
func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	idx, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/e/"))
	ep := s.endpoint(idx)
	if err != nil || ep == nil || !strings.HasPrefix(r.URL.Path, "/e/") {
		http.NotFound(w, r)
		return
	}
	ep.requests.Add(1)
	if ep.behaviour == Failing {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	v := ep.verifier.Load()
	if v == nil {
		http.Error(w, "no signing secret yet", http.StatusServiceUnavailable)
		return
	}
	body, err := v.VerifyRequest(r)
	at := s.clock.Since()
	if err != nil {
		run, _, _ := parseDelivery(body)
		if l := s.ledger(run); l != nil {
			l.BadSignature()
		} else if ep.ledgerEndpoint >= 0 {
			s.orphans.Add(1)
		}
		http.Error(w, "signature: "+err.Error(), http.StatusUnauthorized)
		return
	}
	if ep.ledgerEndpoint >= 0 {
		run, seq, ok := parseDelivery(body)
		switch l := s.ledger(run); {
		case l == nil:
			s.orphans.Add(1)
		case !ok:
			l.Unexpected()
		default:
			l.Received(seq, ep.ledgerEndpoint, at)
		}
	}
	if ep.behaviour == Slow {
		t := time.NewTimer(s.SlowDelay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

var (
	runKey = []byte(`"run":`)
	seqKey = []byte(`"seq":`)
)

// parseDelivery finds the run and event numbers in a delivery body (the
// event's data, in any of the payload formats). It scans rather than
// decodes: the sink shares the CPU with the system under test.
func parseDelivery(body []byte) (run, seq int, ok bool) {
	run, okRun := intAfter(body, runKey)
	seq, okSeq := intAfter(body, seqKey)
	return run, seq, okRun && okSeq
}

func intAfter(b, key []byte) (int, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	n, digits := 0, 0
	for _, c := range b {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
		digits++
		if digits > 12 {
			return 0, false
		}
	}
	return n, digits > 0
}

// Close stops the sink.
func (s *Sink) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		_ = s.srv.Close()
	}
	_ = s.srv.Close()
}

// Clock is the harness's time origin: every time it records is a monotonic
// offset from it, so scheduled and arrival times compare exactly.
type Clock struct{ origin time.Time }

// NewClock starts a clock now.
func NewClock() *Clock { return &Clock{origin: time.Now()} }

// Since is the time elapsed since the origin.
func (c *Clock) Since() time.Duration { return time.Since(c.origin) }

// At is the wall time of an offset.
func (c *Clock) At(d time.Duration) time.Time { return c.origin.Add(d) }
