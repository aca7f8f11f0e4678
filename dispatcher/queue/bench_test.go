package queue

import (
	"context"
	"strconv"
	"testing"

	"github.com/go-logr/logr"
)

// BenchmarkPublishEvent measures synchronous event publishes (each waits for
// its JetStream acknowledgement) to an embedded queue, under the default sync
// policy and under SyncAlways. It reports publishes per second; the ratio
// between the two is the cost of an fsync per message on this disk.
//
//	go test -run '^$' -bench BenchmarkPublishEvent ./dispatcher/queue/
func BenchmarkPublishEvent(b *testing.B) {
	payload := []byte(`{"specversion":"1.0","type":"order.created","source":"shop","id":"0","data":{"order":"A-1","total":42}}`)
	for _, sync := range []SyncPolicy{SyncPeriodic, SyncAlways} {
		b.Run("sync="+string(sync), func(b *testing.B) {
			q, err := Open(context.Background(), Config{StoreDir: b.TempDir(), Sync: sync}, logr.Discard())
			if err != nil {
				b.Fatalf("Open: %v", err)
			}
			defer func() { _ = q.Close() }()
			ctx := context.Background()
			header := Header{"Ce-Type": []string{"order.created"}}
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				id := strconv.Itoa(i)
				i++
				if _, _, err := q.PublishEvent(ctx, "bench", EventDedupID("bench", "shop", id), payload, header); err != nil {
					b.Fatalf("PublishEvent: %v", err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "publishes/s")
		})
	}
}
