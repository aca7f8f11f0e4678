package delivery

import (
	"os"
	"testing"
)

// TestMain runs the test binary as a helper process when the parent test
// asks for one through the environment, and the tests otherwise. Helper
// processes are not tests: registered as tests they would report PASS
// without asserting anything.
func TestMain(m *testing.M) {
	if raw := os.Getenv(natsNodeEnv); raw != "" {
		os.Exit(runNATSNode(raw))
	}
	os.Exit(m.Run())
}
