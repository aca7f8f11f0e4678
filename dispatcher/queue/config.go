package queue

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// SyncPolicy says when the embedded JetStream server forces stored messages
// to disk with fsync.
//
// Both policies write every message to its file (write(2)) before the
// publish is acknowledged: single-replica streams in nats-server flush in
// place, so an acknowledged message is in the kernel's page cache and
// survives the dispatcher process being killed (kill -9) or restarted. The
// policies differ only in what a crash of the node itself (power loss, kernel
// panic) can take away.
type SyncPolicy string

const (
	// SyncPeriodic fsyncs in the background every Config.SyncInterval
	// (nats-server `sync_interval`). A node crash can lose at most the
	// messages acknowledged during the last interval; a process crash loses
	// nothing (TestAcknowledgedEventsSurviveKill checks this with SIGKILL).
	//
	// It is the default because it keeps Herald's contract — nothing
	// acknowledged is lost when the dispatcher is killed or restarted — at an
	// order of magnitude more throughput: on the 2-core build machines
	// embedded JetStream takes about 30k synchronous publishes/s this way
	// and about 4k/s with SyncAlways (DESIGN.md); BenchmarkPublishEvent on a
	// busy machine measured 19k-32k/s against 0.8k-2.2k/s. Persistent
	// volumes in Kubernetes are often network block devices whose fsync is
	// slower still, so the gap widens in a cluster.
	SyncPeriodic SyncPolicy = "Periodic"

	// SyncAlways fsyncs after every write before the publish is acknowledged
	// (nats-server `sync: always`). Choose it when a single node must not
	// lose acknowledged events even to power loss and a publish rate an
	// order of magnitude lower is acceptable. The replicated alternative is
	// an external NATS cluster with R3 streams, where an acknowledgement
	// means a quorum of nodes stored the message.
	SyncAlways SyncPolicy = "Always"
)

// Defaults for zero Config fields.
const (
	// DefaultReplicasExternal is the stream replica count in external mode.
	DefaultReplicasExternal = 3
	// DefaultDuplicateWindow is how long de-duplication ids are remembered.
	DefaultDuplicateWindow = 2 * time.Minute
	// DefaultSyncInterval is the embedded server's background fsync interval.
	DefaultSyncInterval = 10 * time.Second
	// DefaultDeadLetterMaxAge is how long dead letters are kept for replay.
	DefaultDeadLetterMaxAge = 14 * 24 * time.Hour
	// DefaultPublishTimeout bounds one publish attempt.
	DefaultPublishTimeout = 5 * time.Second
	// DefaultStartTimeout bounds Open when its context has no deadline.
	DefaultStartTimeout = 30 * time.Second
	// DefaultDrainTimeout bounds Close.
	DefaultDrainTimeout = 10 * time.Second
	// DefaultConnectionName is the NATS client name.
	DefaultConnectionName = "herald-dispatcher"

	embeddedServerName = "herald-embedded"
)

// Config configures the queue. The zero value plus StoreDir is a valid
// embedded configuration.
type Config struct {
	// StoreDir is the directory the embedded JetStream server keeps its file
	// store in (a PersistentVolume in a cluster). Required in embedded mode,
	// ignored in external mode.
	StoreDir string

	// NATSURL selects external mode: a NATS server URL, or a comma-separated
	// list of URLs of one cluster (the client fails over between them).
	// Empty selects embedded mode.
	NATSURL string

	// Auth names the files of the external server's credentials and TLS
	// material. It must be empty in embedded mode.
	Auth NATSAuth

	// NATSOptions are extra client options for external mode, applied after
	// Herald's own options and those of Auth.
	NATSOptions []nats.Option

	// Replicas is the number of replicas of each stream. In external mode it
	// defaults to 3, so an acknowledged message is stored by a quorum and
	// survives the loss of one node; in embedded mode it must be 0 or 1.
	Replicas int

	// Sync is the embedded server's fsync policy; defaults to SyncPeriodic.
	// External servers use their own configuration.
	Sync SyncPolicy

	// SyncInterval is the background fsync interval under SyncPeriodic;
	// defaults to 10s (nats-server's own default is 2m). Shortening the
	// window a node crash can lose costs one fsync per interval, which is
	// negligible.
	SyncInterval time.Duration

	// MaxStoreBytes caps the embedded server's file store; 0 leaves the
	// sizing to nats-server (75% of the volume's free space at start-up).
	// When the store is full, publishes fail with ErrQueueFull.
	MaxStoreBytes int64

	// DuplicateWindow is how long the events and deliveries streams remember
	// de-duplication ids; defaults to 2m.
	DuplicateWindow time.Duration

	// EventsMaxAge bounds how long an event waits for fan-out. Zero, the
	// default, means no bound: JetStream would drop older events silently,
	// and an acknowledged event must end delivered, dead-lettered or
	// discarded by a counted rule. The store's size bounds the backlog
	// instead (ingest answers 503 when it is full).
	EventsMaxAge time.Duration

	// DeliveriesMaxAge bounds how long a delivery may wait in the queue.
	// Zero, the default, means no bound, for the same reason: the delivery
	// stage dead-letters a delivery older than its endpoint's retry.maxAge
	// (reason MaxAge), including one that waited for a suspended endpoint
	// to resume.
	DeliveriesMaxAge time.Duration

	// DeadLetterMaxAge is how long dead-lettered deliveries are kept for
	// replay; defaults to 14 days.
	DeadLetterMaxAge time.Duration

	// PublishTimeout bounds one publish attempt waiting for its JetStream
	// acknowledgement; a publish is retried (with the same de-duplication
	// id) until its context ends. Defaults to 5s.
	PublishTimeout time.Duration

	// DrainTimeout bounds Close; defaults to 10s.
	DrainTimeout time.Duration

	// ConnectionName is the NATS client name; defaults to
	// "herald-dispatcher".
	ConnectionName string
}

// embedded reports whether the configuration selects the in-process server.
func (c Config) embedded() bool { return strings.TrimSpace(c.NATSURL) == "" }

// withDefaults returns the configuration with defaults filled in, or an error
// naming the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.embedded() {
		if c.StoreDir == "" {
			return c, fmt.Errorf("queue config: StoreDir is required in embedded mode")
		}
		if !c.Auth.IsZero() {
			return c, fmt.Errorf("queue config: Auth is for an external NATS server (NATSURL); the embedded server needs none")
		}
		switch c.Replicas {
		case 0:
			c.Replicas = 1
		case 1:
		default:
			return c, fmt.Errorf("queue config: Replicas must be 1 in embedded mode, got %d", c.Replicas)
		}
	} else {
		if err := c.Auth.validate(c.NATSURL); err != nil {
			return c, err
		}
		if c.Replicas == 0 {
			c.Replicas = DefaultReplicasExternal
		}
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return c, fmt.Errorf("queue config: Replicas must be between 1 and 5, got %d", c.Replicas)
	}
	switch c.Sync {
	case "":
		c.Sync = SyncPeriodic
	case SyncPeriodic, SyncAlways:
	default:
		return c, fmt.Errorf("queue config: Sync must be %q or %q, got %q", SyncPeriodic, SyncAlways, c.Sync)
	}
	setDefault(&c.SyncInterval, DefaultSyncInterval)
	setDefault(&c.DuplicateWindow, DefaultDuplicateWindow)
	setDefault(&c.DeadLetterMaxAge, DefaultDeadLetterMaxAge)
	setDefault(&c.PublishTimeout, DefaultPublishTimeout)
	setDefault(&c.DrainTimeout, DefaultDrainTimeout)
	if c.ConnectionName == "" {
		c.ConnectionName = DefaultConnectionName
	}
	for name, d := range map[string]time.Duration{
		"SyncInterval": c.SyncInterval, "DuplicateWindow": c.DuplicateWindow,
		"EventsMaxAge": c.EventsMaxAge, "DeliveriesMaxAge": c.DeliveriesMaxAge,
		"DeadLetterMaxAge": c.DeadLetterMaxAge, "PublishTimeout": c.PublishTimeout,
		"DrainTimeout": c.DrainTimeout,
	} {
		if d < 0 {
			return c, fmt.Errorf("queue config: %s must not be negative, got %s", name, d)
		}
	}
	// JetStream rejects a duplicate window longer than the stream's max age.
	for name, age := range map[string]time.Duration{"EventsMaxAge": c.EventsMaxAge, "DeliveriesMaxAge": c.DeliveriesMaxAge} {
		if age != 0 && age < c.DuplicateWindow {
			return c, fmt.Errorf("queue config: %s (%s) must not be shorter than DuplicateWindow (%s)", name, age, c.DuplicateWindow)
		}
	}
	if c.MaxStoreBytes < 0 {
		return c, fmt.Errorf("queue config: MaxStoreBytes must not be negative, got %d", c.MaxStoreBytes)
	}
	return c, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}
