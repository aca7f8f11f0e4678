package e2e

// Helpers for the benchmark harness in test/bench, which measures the
// dispatcher process from outside (/proc/<pid>) and so needs its pid.

// PID returns the operating-system process id of the running process.
func (p *Process) PID() int { return p.cmd.Process.Pid }
