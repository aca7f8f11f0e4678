package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// puller speaks JetStream's pull protocol for one Consumer on one inbox
// that lives as long as the Consumer. nats.go's Fetch subscribes to a new
// inbox, starts a goroutine and unsubscribes again for every fetch, and the
// server's subject cache misses on each new inbox: at a modest rate, where
// every fetch returns one message, that was a fetch's main cost. Its
// Consume keeps one inbox but reads ahead, and a message read ahead runs
// its AckWait while it waits; the delivery stage asks for exactly what its
// endpoint's pacing lets it send now.
//
// A pull request is answered with up to its batch of messages and, unless
// the batch was filled, a status message: 408 when its expiry passed, 404
// when a no-wait request found no more, 409 when the server ended it for
// another reason. At most one waiting request (batch 1) is open at a time;
// a Fetch that returns before its answer leaves it open, and the next
// Fetch waits for the same request. A message that arrives for a request
// the puller no longer waits for (the client gave up before its answer)
// stays on the inbox and is the next Fetch's first: no message delivered
// to the inbox is dropped while the Consumer is open, and Close returns
// what it still holds to the queue.
type puller struct {
	nc      *nats.Conn
	subject string // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>

	mu     sync.Mutex // guards sub's creation and closed
	sub    *nats.Subscription
	inbox  chan *nats.Msg
	closed bool
	done   chan struct{} // closed by close
	// open is set while a waiting request is believed to be open on the
	// server, until openUntil (its expiry) plus statusGrace. Only Fetch,
	// which is not called concurrently, uses them.
	open      bool
	openUntil time.Time
}

// statusGrace is how long after a waiting request's expiry the puller
// waits for the server's 408 before it takes the request for lost (the
// connection was lost meanwhile, say).
const statusGrace = time.Second

// noWaitTimeout bounds the wait for the answer to a no-wait request, which
// the server gives at once.
const noWaitTimeout = 5 * time.Second

// pullRequest is the body of $JS.API.CONSUMER.MSG.NEXT.
type pullRequest struct {
	Batch   int           `json:"batch"`
	Expires time.Duration `json:"expires,omitempty"`
	NoWait  bool          `json:"no_wait,omitempty"`
}

func newPuller(nc *nats.Conn, stream, consumer string) *puller {
	return &puller{nc: nc, subject: fmt.Sprintf("%sCONSUMER.MSG.NEXT.%s.%s", jetstream.DefaultAPIPrefix, stream, consumer),
		done: make(chan struct{})}
}

// inboxCapacity is how many messages a puller's inbox holds; Fetch takes at
// most half of it at once, so a late answer or two always fit. A
// subscription nats.go reads for us (SubscribeSync) would hold 65,536:
// half a MiB per active endpoint.
const inboxCapacity = 256

// errConsumerClosed is Fetch's error after Close.
var errConsumerClosed = errors.New("consumer closed")

// subscribe subscribes to the puller's inbox on first use. After it
// returns nil, p.sub is set and stays set: close drains it, and a Fetch
// reading it concurrently then ends with an error.
func (p *puller) subscribe() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errConsumerClosed
	}
	if p.sub == nil {
		inbox := make(chan *nats.Msg, inboxCapacity)
		sub, err := p.nc.ChanSubscribe(p.nc.NewInbox(), inbox)
		if err != nil {
			return err
		}
		p.sub, p.inbox = sub, inbox
	}
	return nil
}

// request sends a pull request answered on the puller's inbox.
func (p *puller) request(req pullRequest) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	return p.nc.PublishRequest(p.subject, p.sub.Subject, body)
}

// buffered returns up to limit messages already on the inbox, without
// waiting; status messages among them end the requests they answer.
func (p *puller) buffered(limit int) ([]*nats.Msg, error) {
	var out []*nats.Msg
	for len(out) < limit {
		var m *nats.Msg
		select {
		case m = <-p.inbox:
		default:
			return out, nil
		}
		if st, ok := pullStatus(m); ok {
			if err := p.ended(st); err != nil {
				return out, err
			}
			continue
		}
		out = append(out, m)
	}
	return out, nil
}

// waitOne waits for one message: it opens a waiting request for one unless
// one is open already, and reads the inbox until a message or the
// request's end arrives, or ctx ends. ok is false when the request ended
// without a message or ctx ended first (err is ctx's error then).
func (p *puller) waitOne(ctx context.Context, fetchWait time.Duration) (*nats.Msg, bool, error) {
	now := time.Now()
	if p.open && now.After(p.openUntil.Add(statusGrace)) {
		p.open = false // its 408 never came
	}
	if !p.open {
		expires := fetchWait
		if deadline, ok := ctx.Deadline(); ok {
			// Let the server end it a little before the caller's deadline,
			// as nats.go does, so the status arrives before ctx ends.
			remaining := time.Until(deadline)
			expires = min(expires, remaining-min(remaining/10, time.Second))
		}
		if expires <= 0 {
			<-ctx.Done()
			return nil, false, ctx.Err()
		}
		if err := p.request(pullRequest{Batch: 1, Expires: expires}); err != nil {
			return nil, false, err
		}
		p.open, p.openUntil = true, now.Add(expires)
	}
	lost := time.NewTimer(time.Until(p.openUntil.Add(statusGrace)))
	defer lost.Stop()
	for {
		var m *nats.Msg
		select {
		case m = <-p.inbox:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-lost.C:
			p.open = false
			return nil, false, nil
		case <-p.done:
			return nil, false, errConsumerClosed
		}
		st, isStatus := pullStatus(m)
		if !isStatus {
			p.open = false
			return m, true, nil
		}
		if err := p.ended(st); err != nil {
			return nil, false, err
		}
		if !p.open {
			return nil, false, nil
		}
	}
}

// noWait asks for up to n messages that are waiting now and returns what
// arrives before the request's end or noWaitTimeout.
func (p *puller) noWait(n int) ([]*nats.Msg, error) {
	if err := p.request(pullRequest{Batch: n, NoWait: true}); err != nil {
		return nil, err
	}
	timeout := time.NewTimer(noWaitTimeout)
	defer timeout.Stop()
	var out []*nats.Msg
	for len(out) < n {
		var m *nats.Msg
		select {
		case m = <-p.inbox:
		case <-timeout.C:
			return out, nil // what still arrives is the next Fetch's
		case <-p.done:
			return out, nil
		}
		st, isStatus := pullStatus(m)
		if !isStatus {
			out = append(out, m)
			continue
		}
		if err := p.ended(st); err != nil {
			return out, err
		}
		if st.noWaitEnd() {
			return out, nil
		}
	}
	return out, nil
}

// ended records that the server ended a request; it returns an error for
// the statuses that mean fetching cannot go on (the consumer is gone, the
// request was refused).
func (p *puller) ended(st status) error {
	switch st.code {
	case "100": // idle heartbeat or flow control: not requested, ignored
		return nil
	case "404":
		return nil // a no-wait request found no more
	case "408":
		// A waiting request expired (or a no-wait one was refused because
		// other requests wait): either way the puller asks again.
		if st.description == "Request Timeout" {
			p.open = false
		}
		return nil
	case "409":
		p.open = false
		if strings.Contains(st.description, "Consumer Deleted") || strings.Contains(st.description, "Consumer is push based") {
			return fmt.Errorf("the server ended the pull request: 409 %s", st.description)
		}
		return nil // leadership change, server shutdown, MaxWaiting: ask again
	default:
		p.open = false
		return fmt.Errorf("the server refused the pull request: %s %s", st.code, st.description)
	}
}

// close unsubscribes and returns the messages still on the inbox to the
// queue, so that they are offered again at once rather than after their
// AckWait.
func (p *puller) close() {
	p.mu.Lock()
	sub, closed := p.sub, p.closed
	if !closed {
		p.closed = true
		close(p.done)
	}
	p.mu.Unlock()
	if closed || sub == nil {
		return
	}
	// Draining unsubscribes at the server and makes sure with a round trip
	// that nothing more is on its way before it ends the subscription:
	// until then, read what arrives and hand it back.
	if err := sub.Drain(); err != nil {
		_ = sub.Unsubscribe()
	}
	deadline := time.Now().Add(closeTimeout)
	for {
		drained := !sub.IsValid() || time.Now().After(deadline)
		for {
			var m *nats.Msg
			select {
			case m = <-p.inbox:
			default:
			}
			if m == nil {
				break
			}
			if _, isStatus := pullStatus(m); !isStatus {
				_ = m.Nak()
			}
		}
		if drained {
			_ = sub.Unsubscribe()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeTimeout bounds close's wait for the inbox to drain.
const closeTimeout = 2 * time.Second

// status is a pull status message's code and description.
type status struct{ code, description string }

// noWaitEnd reports whether st ends a no-wait request.
func (st status) noWaitEnd() bool { return st.code != "100" }

// pullStatus reports whether m is a status message rather than a stored
// message: stored messages always carry their acknowledgement subject.
func pullStatus(m *nats.Msg) (status, bool) {
	if m.Reply != "" {
		return status{}, false
	}
	return status{code: m.Header.Get("Status"), description: m.Header.Get("Description")}, true
}
