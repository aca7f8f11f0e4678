package deliverylog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// Stream is the name of the delivery log's stream.
const Stream = "HERALD_DELIVERY_LOG"

// subjectPrefix starts every subject of the log:
// herald.log.<namespace>.<endpoint>.<webhook-id>.
const subjectPrefix = "herald.log"

// Defaults. 72 hours covers a long weekend of "why didn't my webhook
// arrive?" and the default retry.maxAge (24h) three times over; 1 GiB holds
// about two million attempts of a 300-byte event with a short answer,
// several days of a busy cluster, on the same volume as the queue.
const (
	DefaultMaxAge      = 72 * time.Hour
	DefaultMaxBytes    = 1 << 30
	DefaultMaxAttempts = 20
)

// Config configures the log.
type Config struct {
	// MaxAge is how long records are kept. Defaults to DefaultMaxAge.
	MaxAge time.Duration
	// MaxBytes bounds the stream; the oldest records go first. Defaults
	// to DefaultMaxBytes.
	MaxBytes int64
	// MaxAttempts is how many records of one delivery are kept. Defaults
	// to DefaultMaxAttempts.
	MaxAttempts int
	// Replicas of the stream: 1 embedded, the queue's in external mode.
	Replicas int
}

func (c Config) withDefaults() Config {
	if c.MaxAge <= 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	return c
}

// Log writes and reads the delivery log. Its methods are safe for
// concurrent use.
type Log struct {
	nc      *nats.Conn
	stream  jetstream.Stream
	cfg     Config
	log     logr.Logger
	metrics *metrics
}

// Open creates or updates the log's stream on the queue's JetStream
// (queue.EnsureStream, which retries while JetStream is still starting)
// and returns the log.
func Open(ctx context.Context, q *queue.Queue, cfg Config, reg prometheus.Registerer, log logr.Logger) (*Log, error) {
	cfg = cfg.withDefaults()
	sc := jetstream.StreamConfig{
		Name:              Stream,
		Description:       "Herald: the delivery log, every attempt of every delivery",
		Subjects:          []string{subjectPrefix + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            cfg.MaxAge,
		MaxBytes:          cfg.MaxBytes,
		MaxMsgsPerSubject: int64(cfg.MaxAttempts),
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		// Records are never published twice on purpose; no duplicate
		// window to keep.
		Duplicates: 0,
	}
	stream, err := q.EnsureStream(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("delivery log: %w", err)
	}
	return &Log{nc: q.Conn(), stream: stream, cfg: cfg, log: log, metrics: newMetrics(reg)}, nil
}

// Subject is the subject of one delivery's records.
func Subject(namespace, endpoint, webhookID string) string {
	return subjectPrefix + "." + queue.SubjectToken(namespace) + "." + queue.SubjectToken(endpoint) + "." + queue.SubjectToken(webhookID)
}

// Record appends e to its delivery's records. It never blocks on the
// server and never fails the caller: a record that cannot be sent is
// counted and dropped.
func (l *Log) Record(e Entry) {
	data, err := e.encode()
	if err != nil {
		l.metrics.records.WithLabelValues(resultEncodeError).Inc()
		return
	}
	if err := l.nc.Publish(Subject(e.Namespace, e.Endpoint, e.WebhookID), data); err != nil {
		l.metrics.records.WithLabelValues(resultDropped).Inc()
		l.log.V(1).Info("Delivery log record dropped", "error", err.Error())
		return
	}
	l.metrics.sent.Inc()
}

// Flush waits until the records sent so far reached the server.
func (l *Log) Flush(ctx context.Context) error {
	return l.nc.FlushWithContext(ctx)
}

// Record results.
const (
	resultSent        = "sent"
	resultDropped     = "dropped"
	resultEncodeError = "encode_error"
)

type metrics struct {
	records *prometheus.CounterVec
	// sent is records' "sent" child, looked up once: WithLabelValues
	// hashes the label on every call, and every delivery records.
	sent prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_delivery_log_records_total",
			Help: "Delivery log records by result: sent (handed to NATS; the stream stores it unless the server is gone), dropped (the connection refused it), encode_error.",
		}, []string{"result"}),
	}
	for _, r := range []string{resultSent, resultDropped, resultEncodeError} {
		m.records.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(m.records); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				m.records = already.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	m.sent = m.records.WithLabelValues(resultSent)
	return m
}

// splitSubject returns the namespace, endpoint and webhook-id of a log
// subject.
func splitSubject(subject string) (namespace, endpoint, webhookID string, err error) {
	rest, ok := strings.CutPrefix(subject, subjectPrefix+".")
	if !ok {
		return "", "", "", fmt.Errorf("subject %q is not a delivery log subject", subject)
	}
	tokens := strings.Split(rest, ".")
	if len(tokens) != 3 {
		return "", "", "", fmt.Errorf("subject %q is not a delivery log subject", subject)
	}
	out := make([]string, 3)
	for i, t := range tokens {
		if out[i], err = queue.ParseSubjectToken(t); err != nil {
			return "", "", "", fmt.Errorf("subject %q: %w", subject, err)
		}
	}
	return out[0], out[1], out[2], nil
}
