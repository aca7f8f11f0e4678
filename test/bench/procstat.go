package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat. The kernel
// reports them in USER_HZ, which is 100 on every Linux architecture Go
// supports (sysconf(_SC_CLK_TCK)), independently of the kernel's HZ.
const userHZ = 100

// ProcSample is one reading of a process's resource use.
type ProcSample struct {
	// CPU is user plus system time since the process started.
	CPU time.Duration
	// RSS is the resident set now (VmRSS); PeakRSS the high-water mark
	// (VmHWM) since the start or the last ResetPeakRSS.
	RSS, PeakRSS int64
	// RSSAnon and RSSFile split RSS (RssAnon, RssFile): the process's own
	// memory, and the pages of mapped files it touched (the binary's code
	// and data, read in once as code paths first run).
	RSSAnon, RSSFile int64
	// Threads is the number of OS threads.
	Threads int
}

// ReadProc reads /proc/<pid>/stat and /proc/<pid>/status.
func ReadProc(pid int) (ProcSample, error) {
	var s ProcSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	if s.CPU, err = parseStatCPU(stat); err != nil {
		return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	fields := parseStatus(status)
	s.RSS, s.PeakRSS = fields["VmRSS"]*1024, fields["VmHWM"]*1024
	s.RSSAnon, s.RSSFile = fields["RssAnon"]*1024, fields["RssFile"]*1024
	s.Threads = int(fields["Threads"])
	return s, nil
}

// parseStatCPU returns utime+stime from the contents of /proc/<pid>/stat.
// The command name (field 2) is in parentheses and may contain spaces, so
// fields are counted after its closing parenthesis: state is field 3,
// utime field 14 and stime field 15.
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name")
	}
	fields := strings.Fields(string(stat[i+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, fmt.Errorf("only %d fields", len(fields)+2)
	}
	u, err1 := strconv.ParseInt(fields[utime], 10, 64)
	k, err2 := strconv.ParseInt(fields[stime], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("utime %q, stime %q are not numbers", fields[utime], fields[stime])
	}
	return time.Duration(u+k) * time.Second / userHZ, nil
}

// parseStatus returns the numeric fields of /proc/<pid>/status ("VmRSS:
// 1234 kB" gives VmRSS=1234).
func parseStatus(status []byte) map[string]int64 {
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			out[name] = v
		}
	}
	return out
}

// ResetPeakRSS resets the VmHWM of pid to its current RSS (Linux
// clear_refs value 5), so the next peak is that of one scenario.
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// MachineCPU is the aggregate of /proc/stat's first line: busy and total
// CPU time of the whole machine, every process included.
type MachineCPU struct{ Busy, Total time.Duration }

// ReadMachineCPU reads /proc/stat.
func ReadMachineCPU() (MachineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return MachineCPU{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return MachineCPU{}, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	var m MachineCPU
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return MachineCPU{}, fmt.Errorf("/proc/stat: %w", err)
		}
		d := time.Duration(n) * time.Second / userHZ
		m.Total += d
		// Fields: user nice system idle iowait irq softirq steal guest
		// guest_nice; guest time is already counted in user and nice.
		switch {
		case i == 3 || i == 4: // idle, iowait
		case i >= 8: // guest, guest_nice
			m.Total -= d
		default:
			m.Busy += d
		}
	}
	return m, nil
}

// ReadPressure returns the "some" total of /proc/pressure/<resource>
// (cpu, io, memory): how long at least one task waited for the resource
// since boot. Its growth over a step, divided by the step's duration, is
// the share of the step the machine was contended.
func ReadPressure(resource string) (time.Duration, error) {
	b, err := os.ReadFile("/proc/pressure/" + resource)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				us, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return 0, err
				}
				return time.Duration(us) * time.Microsecond, nil
			}
		}
	}
	return 0, fmt.Errorf("/proc/pressure/%s: no total", resource)
}
