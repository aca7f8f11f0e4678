package queue

import (
	"os"
	"testing"
)

// TestMain runs the test binary as a helper process when the parent test
// asks for one through the environment, and the tests otherwise. Helper
// processes are not tests: registered as tests they would report PASS
// without asserting anything.
func TestMain(m *testing.M) {
	if dir := os.Getenv(killChildDirEnv); dir != "" {
		os.Exit(runKillChild(dir))
	}
	os.Exit(m.Run())
}
