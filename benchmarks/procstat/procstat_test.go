package procstat

import (
	"os"
	"strings"
	"testing"
	"time"
)

// A real stat line, with a command name that contains ") (" to trip up naive splitting.
const sampleStat = "4242 (pg (bouncer) x) S 1 4242 4242 0 -1 4194560 3160 0 0 0 " +
	"1234 567 0 0 20 0 1 0 48587 3133440 381 18446744073709551615 94324397457408 " +
	"94324397477289 140727860513872 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"

const sampleStatus = `Name:	pgbouncer
Umask:	0022
State:	S (sleeping)
VmPeak:	   13776 kB
VmSize:	   13760 kB
VmHWM:	    9992 kB
VmRSS:	    8192 kB
RssAnon:	    1140 kB
Threads:	1
`

func TestParseStat(t *testing.T) {
	ticks, err := ParseStat([]byte(sampleStat))
	if err != nil {
		t.Fatal(err)
	}
	if ticks != 1234+567 {
		t.Errorf("ticks = %d, want %d", ticks, 1234+567)
	}
	if _, err := ParseStat([]byte("4242 (x) S 1 2 3")); err == nil {
		t.Error("short stat line: want error")
	}
	if _, err := ParseStat([]byte("garbage")); err == nil {
		t.Error("no command name: want error")
	}
}

func TestParseStatusRSS(t *testing.T) {
	rss, err := ParseStatusRSS([]byte(sampleStatus))
	if err != nil {
		t.Fatal(err)
	}
	if rss != 8192*1024 {
		t.Errorf("rss = %d, want %d", rss, 8192*1024)
	}
	_, err = ParseStatusRSS([]byte(strings.ReplaceAll(sampleStatus, "VmRSS", "VmXXX")))
	if err == nil {
		t.Error("missing VmRSS: want error")
	}
}

func TestReadSelf(t *testing.T) {
	// Burn some CPU so the tick counter is visibly above zero.
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	s, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSSBytes < 1<<20 {
		t.Errorf("own RSS %d bytes: implausibly small", s.RSSBytes)
	}
	if s.CPUTicks == 0 {
		t.Error("own CPU ticks = 0 after burning 50ms")
	}
	if d := TicksToDuration(100); d < 100*time.Millisecond || d > 10*time.Second {
		t.Errorf("100 ticks = %v: clock tick rate implausible", d)
	}
}
