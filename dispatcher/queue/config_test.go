package queue

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestConfigDefaults(t *testing.T) {
	embedded, err := Config{StoreDir: "/data"}.withDefaults()
	if err != nil {
		t.Fatalf("embedded defaults: %v", err)
	}
	if embedded.Replicas != 1 || embedded.Sync != SyncPeriodic || embedded.SyncInterval != DefaultSyncInterval ||
		embedded.DuplicateWindow != 2*time.Minute || embedded.DeliveriesMaxAge != 0 || embedded.EventsMaxAge != 0 {
		t.Errorf("embedded defaults = %+v", embedded)
	}
	external, err := Config{NATSURL: "nats://127.0.0.1:4222,nats://127.0.0.1:4223"}.withDefaults()
	if err != nil {
		t.Fatalf("external defaults: %v", err)
	}
	if external.Replicas != 3 {
		t.Errorf("external Replicas = %d, want 3", external.Replicas)
	}
}

func TestConfigRejectsInvalid(t *testing.T) {
	tests := map[string]struct {
		cfg  Config
		want string
	}{
		"embedded without store":     {Config{}, "StoreDir"},
		"embedded with replicas":     {Config{StoreDir: "/d", Replicas: 3}, "Replicas"},
		"external with too many":     {Config{NATSURL: "nats://127.0.0.1:4222", Replicas: 7}, "Replicas"},
		"unknown sync":               {Config{StoreDir: "/d", Sync: "Sometimes"}, "Sync"},
		"negative window":            {Config{StoreDir: "/d", DuplicateWindow: -time.Second}, "DuplicateWindow"},
		"max age shorter than dedup": {Config{StoreDir: "/d", EventsMaxAge: time.Minute}, "EventsMaxAge"},
		"negative store cap":         {Config{StoreDir: "/d", MaxStoreBytes: -1}, "MaxStoreBytes"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("withDefaults(%+v) error = %v, want one naming %s", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestRedactURLs(t *testing.T) {
	got := redactURLs("nats://user:secret@127.0.0.1:4222, nats://s3cr3t-token@127.0.0.1:4223,nats://127.0.0.1:4224")
	if strings.Contains(got, "secret") || strings.Contains(got, "s3cr3t") || !strings.Contains(got, "127.0.0.1:4224") {
		t.Fatalf("redactURLs = %q", got)
	}
}

func TestClassifyErrors(t *testing.T) {
	tests := []struct {
		err       error
		sentinel  error
		transient bool
	}{
		{&jetstream.APIError{ErrorCode: codeInsufficientResources, Code: 503}, ErrQueueFull, false},
		{&jetstream.APIError{ErrorCode: codeStreamStoreFailed, Code: 503, Description: "maximum bytes exceeded"}, ErrQueueFull, false},
		{&jetstream.APIError{ErrorCode: codeStreamMessageTooLarge, Code: 400}, ErrMessageTooLarge, false},
		{nats.ErrMaxPayload, ErrMessageTooLarge, false},
		{nats.ErrConnectionClosed, ErrClosed, false},
		{&jetstream.APIError{ErrorCode: codeClusterNotAvailable, Code: 503}, nil, true},
		{&jetstream.APIError{ErrorCode: codeDuplicateInProcess, Code: 409}, nil, true},
		{jetstream.ErrNoStreamResponse, nil, true},
		{nats.ErrTimeout, nil, true},
	}
	for _, tt := range tests {
		if got := isTransient(tt.err); got != tt.transient {
			t.Errorf("isTransient(%v) = %v, want %v", tt.err, got, tt.transient)
		}
		if tt.sentinel != nil && !errors.Is(classify(tt.err), tt.sentinel) {
			t.Errorf("classify(%v) = %v, want it to wrap %v", tt.err, classify(tt.err), tt.sentinel)
		}
	}
}
