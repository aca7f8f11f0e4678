package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Publisher is an open-loop CloudEvents publisher: it schedules event i of
// a plan at Start + i/Rate whatever happened to the earlier ones, and posts
// the events that are due in batches (application/cloudevents-batch+json)
// over at most Conns connections. When every connection is busy, events
// wait — and since the ledger measures latency from each event's scheduled
// time, a publisher or an ingest that cannot keep up shows in the figures
// instead of silently lowering the offered rate.
type Publisher struct {
	// URL is the ingest URL of the namespace (…/v1/namespaces/<ns>/events).
	URL string
	// Token is the bearer token (a ServiceAccount token with Herald's
	// audience); empty sends none.
	Token string
	// Conns bounds the requests in flight.
	Conns int
	// MaxBatch bounds the events of one request.
	MaxBatch int
	// Flush is the shortest time between two wake-ups of the scheduler:
	// events falling due within it go in one request.
	Flush time.Duration
	// RetryFor is how long a batch answered 429 or 5xx, or not answered at
	// all, is retried (as a real publisher would) before it is given up.
	RetryFor time.Duration

	client *http.Client
}

// Plan is one open-loop run.
type Plan struct {
	Ledger *Ledger
	// Rate is the offered rate in events per second.
	Rate float64
	// Start is when event 0 is due, on the harness clock.
	Start time.Duration
	// Type returns the CloudEvents type of event seq.
	Type func(seq int) string
	// PadBytes of filler in each event's data, to reach a realistic size.
	PadBytes int
	// Paused, when set, holds new requests while it returns true; the
	// events keep their schedule (used to model a publisher outage).
	Paused func() bool
}

// PublishStats counts what the publisher did.
type PublishStats struct {
	Requests   int64 `json:"requests"`
	Retries    int64 `json:"retries"`
	Status429  int64 `json:"status429"`
	Status5xx  int64 `json:"status5xx"`
	NetErrors  int64 `json:"networkErrors"`
	Rejected4x int64 `json:"rejected4xx"`
	// FirstError is the first non-retryable answer, for diagnosis.
	FirstError string `json:"firstError,omitempty"`
}

type publishCounters struct {
	requests, retries, s429, s5xx, netErrors, rejected atomic.Int64
	firstError                                         atomic.Pointer[string]
}

// NewPublisher returns a publisher with a connection pool of conns,
// verifying ingest's certificate with tlsConfig.
func NewPublisher(url, token string, conns int, tlsConfig *tls.Config) *Publisher {
	return &Publisher{
		URL: url, Token: token, Conns: conns, MaxBatch: 100, Flush: time.Millisecond, RetryFor: 20 * time.Second,
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				TLSClientConfig:     tlsConfig,
				MaxIdleConns:        conns,
				MaxIdleConnsPerHost: conns,
				MaxConnsPerHost:     conns,
				IdleConnTimeout:     time.Minute,
				DisableCompression:  true,
			},
		},
	}
}

type batch struct{ from, to int }

// Run publishes the plan and returns when every event was acknowledged or
// given up, or ctx ended (the remaining events then count as given up).
func (p *Publisher) Run(ctx context.Context, clock *Clock, plan Plan) PublishStats {
	l := plan.Ledger
	n := l.Events()
	interval := float64(time.Second) / plan.Rate
	for seq := range n {
		l.Schedule(seq, plan.Start+time.Duration(float64(seq)*interval))
	}
	var c publishCounters
	work := make(chan batch)
	var wg sync.WaitGroup
	for range p.Conns {
		wg.Go(func() {
			var buf bytes.Buffer
			for b := range work {
				p.send(ctx, clock, plan, b, &buf, &c)
			}
		})
	}

	next := 0
	lastWake := clock.Since()
	for next < n && ctx.Err() == nil {
		now := clock.Since()
		if plan.Paused != nil && plan.Paused() {
			sleepCtx(ctx, time.Millisecond)
			continue
		}
		due := n
		if now < l.Scheduled(n-1) {
			due = int(float64(now-plan.Start)/interval) + 1
			due = min(max(due, 0), n)
		}
		if due > next {
			to := min(due, next+p.MaxBatch)
			select {
			case work <- batch{next, to}:
				next = to
			case <-ctx.Done():
			}
			continue
		}
		wake := max(l.Scheduled(next), lastWake+p.Flush)
		sleepCtx(ctx, wake-now)
		lastWake = clock.Since()
	}
	close(work)
	wg.Wait()
	if next < n {
		l.Unacked(next, n)
	}
	s := PublishStats{
		Requests: c.requests.Load(), Retries: c.retries.Load(), Status429: c.s429.Load(),
		Status5xx: c.s5xx.Load(), NetErrors: c.netErrors.Load(), Rejected4x: c.rejected.Load(),
	}
	if e := c.firstError.Load(); e != nil {
		s.FirstError = *e
	}
	return s
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// send posts one batch, retrying as a publisher would, and records the
// outcome in the ledger.
func (p *Publisher) send(ctx context.Context, clock *Clock, plan Plan, b batch, buf *bytes.Buffer, c *publishCounters) {
	l := plan.Ledger
	buf.Reset()
	writeBatch(buf, l.Run, b, plan)
	body := buf.Bytes()
	giveUp := clock.Since() + p.RetryFor
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.retries.Add(1)
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, time.Second)
		}
		if ctx.Err() != nil {
			l.Unacked(b.from, b.to)
			return
		}
		for plan.Paused != nil && plan.Paused() && ctx.Err() == nil {
			sleepCtx(ctx, time.Millisecond)
		}
		c.requests.Add(1)
		code, msg, err := p.post(ctx, body)
		switch {
		case err != nil:
			c.netErrors.Add(1)
		case code == http.StatusAccepted:
			l.Acked(b.from, b.to, clock.Since())
			return
		case code == http.StatusTooManyRequests:
			c.s429.Add(1)
		case code >= 500:
			c.s5xx.Add(1)
		default:
			c.rejected.Add(1)
			e := fmt.Sprintf("ingest answered %d: %s", code, msg)
			c.firstError.CompareAndSwap(nil, &e)
			l.Rejected(b.from, b.to)
			return
		}
		if clock.Since() > giveUp {
			l.Unacked(b.from, b.to)
			return
		}
	}
}

func (p *Publisher) post(ctx context.Context, body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/cloudevents-batch+json")
	if p.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.Token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	var msg []byte
	if resp.StatusCode != http.StatusAccepted {
		msg, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(bytes.TrimSpace(msg)), nil
}

// eventSource is the CloudEvents source of every benchmark event.
const eventSource = "/herald/bench"

// writeBatch writes events [b.from, b.to) of run as a CloudEvents JSON batch.
func writeBatch(buf *bytes.Buffer, run int, b batch, plan Plan) {
	buf.WriteByte('[')
	for seq := b.from; seq < b.to; seq++ {
		if seq > b.from {
			buf.WriteByte(',')
		}
		writeEvent(buf, run, seq, plan.Type(seq), plan.PadBytes)
	}
	buf.WriteByte(']')
}

// writeEvent writes one structured-mode event whose data carries the run
// and event numbers the sink reads back.
func writeEvent(buf *bytes.Buffer, run, seq int, typ string, pad int) {
	var num [20]byte
	buf.WriteString(`{"specversion":"1.0","id":"r`)
	buf.Write(strconv.AppendInt(num[:0], int64(run), 10))
	buf.WriteByte('-')
	buf.Write(strconv.AppendInt(num[:0], int64(seq), 10))
	buf.WriteString(`","source":"` + eventSource + `","type":"`)
	buf.WriteString(typ)
	buf.WriteString(`","datacontenttype":"application/json","data":`)
	writeData(buf, run, seq, pad)
	buf.WriteByte('}')
}

// writeData writes the event data: {"run":…,"seq":…,"pad":"…"}.
func writeData(buf *bytes.Buffer, run, seq, pad int) {
	var num [20]byte
	buf.WriteString(`{"run":`)
	buf.Write(strconv.AppendInt(num[:0], int64(run), 10))
	buf.WriteString(`,"seq":`)
	buf.Write(strconv.AppendInt(num[:0], int64(seq), 10))
	buf.WriteString(`,"pad":"`)
	for i := range pad {
		buf.WriteByte('a' + byte(i%26))
	}
	buf.WriteString(`"}`)
}
