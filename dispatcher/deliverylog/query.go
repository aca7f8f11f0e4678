package deliverylog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// Name is the name of a Delivery: its webhook-id, a dot, and its
// endpoint's name. A webhook-id names an event's message and is shared by
// every endpoint the event goes to (as in Svix), so the endpoint completes
// the name. Webhook-ids contain no dot; endpoint names may.
func Name(webhookID, endpoint string) string { return webhookID + "." + endpoint }

// ParseName splits a Delivery name into webhook-id and endpoint.
func ParseName(name string) (webhookID, endpoint string, err error) {
	id, ep, ok := strings.Cut(name, ".")
	if !ok || id == "" || ep == "" {
		return "", "", fmt.Errorf("%q is not a delivery name: it is <webhook-id>.<endpoint>", name)
	}
	return id, ep, nil
}

// Query selects deliveries of one namespace: all of them, those of one
// endpoint, or one delivery.
type Query struct {
	Namespace string
	// Endpoint narrows the query to one WebhookEndpoint; optional.
	Endpoint string
	// WebhookID narrows it to one delivery; it needs Endpoint.
	WebhookID string
}

func (q Query) filter() (string, error) {
	if q.Namespace == "" {
		return "", errors.New("delivery log query: a namespace is required")
	}
	f := subjectPrefix + "." + queue.SubjectToken(q.Namespace)
	switch {
	case q.Endpoint == "" && q.WebhookID != "":
		return "", errors.New("delivery log query: a webhook-id needs its endpoint")
	case q.Endpoint == "":
		return f + ".*.*", nil
	case q.WebhookID == "":
		return f + "." + queue.SubjectToken(q.Endpoint) + ".*", nil
	default:
		return Subject(q.Namespace, q.Endpoint, q.WebhookID), nil
	}
}

// ErrNotFound is returned by Get for a delivery the log does not hold.
var ErrNotFound = errors.New("delivery not found in the log")

// fetchBatch is how many records one fetch of a query asks for.
const fetchBatch = 512

// List returns the deliveries q selects, in the order of their last
// record, and the log's sequence number when the list was read (the list's
// resourceVersion; Watch continues from it).
func (l *Log) List(ctx context.Context, q Query) ([]*deliveryv1.Delivery, uint64, error) {
	filter, err := q.filter()
	if err != nil {
		return nil, 0, err
	}
	info, err := l.stream.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("read the delivery log: %w", err)
	}
	last := info.State.LastSeq
	order, folds, err := l.collect(ctx, filter, last)
	if err != nil {
		return nil, 0, err
	}
	out := make([]*deliveryv1.Delivery, 0, len(order))
	for _, subject := range order {
		d, err := folds[subject].delivery(subject)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, d)
	}
	return out, last, nil
}

// collect folds the records matching filter, up to sequence to (0: all),
// per subject; order lists the subjects by first record.
func (l *Log) collect(ctx context.Context, filter string, to uint64) ([]string, map[string]*fold, error) {
	folds := map[string]*fold{}
	var order []string
	err := l.scan(ctx, filter, 1, to, func(subject string, seq uint64, e *Entry) {
		f, ok := folds[subject]
		if !ok {
			f = &fold{}
			folds[subject] = f
			order = append(order, subject)
		}
		f.add(seq, e)
	})
	if err != nil {
		return nil, nil, err
	}
	return order, folds, nil
}

// Get returns one delivery.
func (l *Log) Get(ctx context.Context, namespace, endpoint, webhookID string) (*deliveryv1.Delivery, error) {
	ds, _, err := l.List(ctx, Query{Namespace: namespace, Endpoint: endpoint, WebhookID: webhookID})
	if err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, ErrNotFound
	}
	return ds[0], nil
}

// Payload returns the last payload recorded for a delivery: the queued
// message a Redelivery queues again. ok is false when the log holds none
// (the delivery is still queued, or its records expired).
func (l *Log) Payload(ctx context.Context, namespace, endpoint, webhookID string) (payload []byte, ingested time.Time, ok bool, err error) {
	filter := Subject(namespace, endpoint, webhookID)
	err = l.scan(ctx, filter, 1, 0, func(_ string, _ uint64, e *Entry) {
		if !e.IngestedAt.IsZero() {
			ingested = e.IngestedAt
		}
		if len(e.Payload) > 0 {
			payload, ok = e.Payload, true
		}
	})
	return payload, ingested, ok, err
}

// scan reads the records matching filter from sequence from up to
// sequence to (0: up to whatever is there when the scan starts), in order.
func (l *Log) scan(ctx context.Context, filter string, from, to uint64, fn func(subject string, seq uint64, e *Entry)) error {
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    max(from, 1),
	})
	if err != nil {
		return fmt.Errorf("read the delivery log: %w", err)
	}
	pending := cons.CachedInfo().NumPending
	for pending > 0 {
		batch, err := cons.FetchNoWait(fetchBatch)
		if err != nil {
			return fmt.Errorf("read the delivery log: %w", err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return fmt.Errorf("read the delivery log: %w", err)
			}
			pending = md.NumPending
			if to != 0 && md.Sequence.Stream > to {
				pending = 0
				break
			}
			var e Entry
			if err := json.Unmarshal(msg.Data(), &e); err != nil {
				// A record this version cannot read is skipped, not fatal:
				// the rest of the log stays readable.
				l.log.V(1).Info("Skipping an unreadable delivery log record", "sequence", md.Sequence.Stream, "error", err.Error())
				continue
			}
			fn(msg.Subject(), md.Sequence.Stream, &e)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("read the delivery log: %w", err)
		}
		if n == 0 {
			// The records counted as pending expired meanwhile.
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// fold accumulates one delivery's records.
type fold struct {
	seq      uint64
	first    time.Time
	ingested time.Time
	event    Event
	status   deliveryv1.DeliveryStatus
	records  int
}

func (f *fold) add(seq uint64, e *Entry) {
	f.seq = seq
	f.records++
	if f.first.IsZero() || e.Time.Before(f.first) {
		f.first = e.Time
	}
	if !e.IngestedAt.IsZero() {
		f.ingested = e.IngestedAt
	}
	if e.Event.ID != "" {
		f.event = e.Event
	}
	s := &f.status
	s.Phase = e.Phase
	if e.Requeued {
		t := metav1.NewTime(e.Time)
		s.QueuedTime, s.NextAttemptTime, s.AttemptCount, s.DeadLetterReason = &t, nil, 0, ""
		if s.Phase == "" {
			s.Phase = deliveryv1.DeliveryPending
		}
		return
	}
	s.AttemptCount = int32(e.Attempt)
	s.NextAttemptTime = nil
	if !e.NextAttempt.IsZero() {
		t := metav1.NewTime(e.NextAttempt)
		s.NextAttemptTime = &t
	}
	s.DeadLetterReason = e.DeadLetterReason
	s.Attempts = append(s.Attempts, deliveryv1.DeliveryAttempt{
		Time:       metav1.NewTime(e.Time),
		Duration:   metav1.Duration{Duration: e.Duration},
		StatusCode: int32(e.StatusCode),
		Error:      e.Error,
		Response:   responseText(e.Response),
	})
}

// delivery builds the Delivery of the folded records.
func (f *fold) delivery(subject string) (*deliveryv1.Delivery, error) {
	namespace, endpoint, webhookID, err := splitSubject(subject)
	if err != nil {
		return nil, err
	}
	created := f.ingested
	if created.IsZero() {
		created = f.first
	}
	d := &deliveryv1.Delivery{
		TypeMeta: metav1.TypeMeta{APIVersion: deliveryv1.SchemeGroupVersion.String(), Kind: "Delivery"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              Name(webhookID, endpoint),
			Namespace:         namespace,
			ResourceVersion:   strconv.FormatUint(f.seq, 10),
			CreationTimestamp: metav1.NewTime(created),
			Labels:            map[string]string{deliveryv1.LabelEndpoint: endpoint},
		},
		Spec: deliveryv1.DeliverySpec{
			EndpointRef: deliveryv1.EndpointReference{Name: endpoint},
			Event: deliveryv1.EventReference{
				ID: f.event.ID, Source: f.event.Source, Type: f.event.Type, Subject: f.event.Subject,
			},
		},
		Status: f.status,
	}
	if !f.event.Time.IsZero() {
		t := metav1.NewTime(f.event.Time)
		d.Spec.Event.Time = &t
	}
	// UID: stable per delivery, so that clients keying on it see one
	// object across its records.
	d.UID = uidOf(subject)
	return d, nil
}

// responseText is a response body as API text: invalid UTF-8 replaced.
func responseText(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
