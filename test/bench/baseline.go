package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// BaselineResult is the loopback ceiling: a plain Go HTTP client posting
// the payloads Herald would send, signed, to the same sink.
type BaselineResult struct {
	Concurrency  int            `json:"concurrency"`
	Seconds      float64        `json:"seconds"`
	Requests     int            `json:"requests"`
	PerSecond    float64        `json:"perSecond"`
	Latency      LatencySummary `json:"latency"`
	Ledger       Settlement     `json:"ledger"`
	ClientCPUSec float64        `json:"harnessCpuSeconds"`
}

// runBaseline posts signed Standard Webhooks bodies, shaped like the
// dispatcher's deliveries of the benchmark events, to a fresh healthy sink
// endpoint from concurrency closed-loop workers for d, and counts the
// requests the sink verified.
func runBaseline(ctx context.Context, clock *Clock, sink *Sink, run, concurrency, padBytes int, d time.Duration) (*BaselineResult, error) {
	secret, err := signature.NewHMACSecret()
	if err != nil {
		return nil, err
	}
	signer, err := signature.NewSigner(secret)
	if err != nil {
		return nil, err
	}
	idx, url := sink.AddEndpoint(Healthy, 0)
	if err := sink.SetSecret(idx, secret); err != nil {
		return nil, err
	}
	// Enough slots for 200,000 requests/s; the loop stops early if they run out.
	capacity := max(int(200_000*d.Seconds()), 1000)
	l := NewLedger(run, capacity, 1, FanOutSlots(1))
	sink.Track(l)

	transport := &http.Transport{Proxy: nil, MaxIdleConns: concurrency, MaxIdleConnsPerHost: concurrency, DisableCompression: true}
	defer transport.CloseIdleConnections()
	hc := &http.Client{Transport: transport, Timeout: 10 * time.Second}

	var next atomic.Int64
	cpu0, _ := ReadProc(selfPID())
	start := clock.Since()
	end := start + d
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[string]
	for range concurrency {
		wg.Go(func() {
			var data, body bytes.Buffer
			for ctx.Err() == nil && clock.Since() < end {
				seq := int(next.Add(1) - 1)
				if seq >= capacity {
					return
				}
				sent := clock.Since()
				l.Schedule(seq, sent)
				data.Reset()
				writeData(&data, run, seq, padBytes)
				body.Reset()
				body.WriteString(`{"type":"bench.baseline","timestamp":"`)
				body.WriteString(clock.At(sent).UTC().Format(time.RFC3339Nano))
				body.WriteString(`","data":`)
				body.Write(data.Bytes())
				body.WriteByte('}')
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body.Bytes()))
				if err != nil {
					return
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("User-Agent", "Herald/bench-baseline")
				signer.SetHeaders(req.Header, fmt.Sprintf("msg_baseline_%d", seq), time.Now(), body.Bytes())
				resp, err := hc.Do(req)
				if err != nil {
					e := err.Error()
					firstErr.CompareAndSwap(nil, &e)
					l.Unacked(seq, seq+1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					l.Acked(seq, seq+1, clock.Since())
				} else {
					l.Unacked(seq, seq+1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := clock.Since() - start
	cpu1, _ := ReadProc(selfPID())
	used := min(int(next.Load()), capacity)
	// Only the slots used are settled: a smaller ledger view of the run.
	l.events = used
	s := l.Settle()
	if e := firstErr.Load(); e != nil && s.Delivered == 0 {
		return nil, fmt.Errorf("baseline: no request succeeded: %s", *e)
	}
	return &BaselineResult{
		Concurrency:  concurrency,
		Seconds:      elapsed.Seconds(),
		Requests:     s.Delivered,
		PerSecond:    float64(s.Delivered) / elapsed.Seconds(),
		Latency:      s.Latency,
		Ledger:       s,
		ClientCPUSec: (cpu1.CPU - cpu0.CPU).Seconds(),
	}, nil
}
