package queue

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

const killChildDirEnv = "HERALD_QUEUE_KILL_CHILD_DIR"

// TestAcknowledgedEventsSurviveKill runs a child process that publishes
// events to an embedded queue with the default sync policy (no fsync per
// message) and reports each acknowledged event, kills it with SIGKILL while
// it publishes, and checks that the reopened store holds every acknowledged
// event: the delivery contract for a killed dispatcher.
func TestAcknowledgedEventsSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	ctx := testContext(t)
	// The test binary itself is the child: TestMain runs runKillChild
	// instead of the tests when killChildDirEnv is set.
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), killChildDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}

	const killAfter = 300
	acked := map[string]bool{}
	lines := bufio.NewScanner(stdout)
	killed := false
	for lines.Scan() {
		id, ok := strings.CutPrefix(lines.Text(), "acked ")
		if !ok {
			continue
		}
		acked[id] = true
		if len(acked) == killAfter && !killed {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatalf("kill child: %v", err)
			}
			killed = true
		}
	}
	// Lines the child wrote before it died are still read above.
	_ = cmd.Wait()
	if !killed {
		t.Fatalf("child exited after %d acknowledged events without being killed", len(acked))
	}

	q := openEmbedded(t, dir)
	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	stored := map[string]bool{}
	for _, m := range fetchN(t, ctx, c, int(storedMessages(t, ctx, q.events, eventsPrefix+".*")), 20*time.Second) {
		stored[m.Header.Get("Event-Id")] = true
	}
	missing := 0
	for id := range acked {
		if !stored[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged events lost after kill -9 (store holds %d)", missing, len(acked), len(stored))
	}
	t.Logf("all %d acknowledged events survived kill -9; store holds %d", len(acked), len(stored))
}

// runKillChild is the child process of TestAcknowledgedEventsSurviveKill
// (TestMain runs it when killChildDirEnv is set): it publishes events to an
// embedded queue in dir and prints "acked <id>" for each acknowledged one
// until the parent kills it. It returns the exit code.
func runKillChild(dir string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := Open(ctx, Config{StoreDir: dir}, logr.Discard())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 2
	}
	out := bufio.NewWriter(os.Stdout)
	// Bounded: the parent kills the child long before this ends.
	for i := 0; i < 1_000_000 && ctx.Err() == nil; i++ {
		id := strconv.Itoa(i)
		header := Header{"Event-Id": []string{id}}
		if _, _, err := q.PublishEvent(ctx, "ns", EventDedupID("ns", "crash", id), []byte(eventData(i)), header); err != nil {
			fmt.Fprintln(os.Stderr, "child: publish:", err)
			return 2
		}
		_, _ = fmt.Fprintln(out, "acked", id)
		if err := out.Flush(); err != nil {
			return 2
		}
	}
	return 3 // never killed: the parent reports it
}
