// Package procstat reads a process's CPU time and resident memory from Linux /proc.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sample is one reading of a process.
type Sample struct {
	CPUTicks uint64 // utime + stime, in clock ticks
	RSSBytes int64  // VmRSS
}

// Read samples process pid.
func Read(pid int) (Sample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: %w", err)
	}
	ticks, err := ParseStat(stat)
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: pid %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: %w", err)
	}
	rss, err := ParseStatusRSS(status)
	if err != nil {
		return Sample{}, fmt.Errorf("procstat: pid %d: %w", pid, err)
	}
	return Sample{CPUTicks: ticks, RSSBytes: rss}, nil
}

// ParseStat returns utime+stime from the contents of /proc/PID/stat. The command name (field 2)
// is in parentheses and may itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func ParseStat(data []byte) (uint64, error) {
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, fmt.Errorf("stat: no ')' after command name")
	}
	// After ')' come fields 3 (state) onwards; utime and stime are fields 14 and 15.
	fields := strings.Fields(string(data[end+1:]))
	const utimeIdx = 14 - 3
	if len(fields) <= utimeIdx+1 {
		return 0, fmt.Errorf("stat: only %d fields after command name", len(fields))
	}
	utime, err := strconv.ParseUint(fields[utimeIdx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: utime: %w", err)
	}
	stime, err := strconv.ParseUint(fields[utimeIdx+1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: stime: %w", err)
	}
	return utime + stime, nil
}

// ParseStatusRSS returns VmRSS in bytes from the contents of /proc/PID/status.
func ParseStatusRSS(data []byte) (int64, error) {
	for line := range strings.SplitSeq(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("status: malformed VmRSS line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status: VmRSS: %w", err)
		}
		return kb * 1024, nil
	}
	// Kernel threads and zombies have no VmRSS line.
	return 0, fmt.Errorf("status: no VmRSS line")
}

var clockTicks = sync.OnceValue(func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100 // USER_HZ on every mainstream Linux architecture
})

// TicksToDuration converts clock ticks (sysconf(_SC_CLK_TCK) per second) to a duration.
func TicksToDuration(ticks uint64) time.Duration {
	return time.Duration(ticks) * time.Second / time.Duration(clockTicks())
}
