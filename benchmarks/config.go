// Package benchmarks is the engine of asyncgate-bench, a load generator for PostgreSQL and
// anything that speaks its protocol (asyncgate, PgBouncer, Odyssey, …).
//
// It runs pgbench-style workloads from many clients, in a closed loop (each client waits for its
// answer) or an open loop (Poisson arrivals at a fixed rate, latency counted from the intended
// send time so that a stall shows up in the percentiles), against several targets in interleaved
// rounds so that a comparison survives a noisy machine. Beside throughput and latency it can
// sample the CPU time and memory of the processes under test.
package benchmarks

import (
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Protocol is the query protocol clients use.
type Protocol string

const (
	ProtocolSimple   Protocol = "simple"   // Query messages, values interpolated client-side
	ProtocolExtended Protocol = "extended" // Parse/Bind/Execute on the unnamed statement
	ProtocolPrepared Protocol = "prepared" // named statements, prepared once per connection
)

// ExecMode maps p to pgx's query execution mode.
func (p Protocol) ExecMode() (pgx.QueryExecMode, error) {
	switch p {
	case ProtocolSimple:
		return pgx.QueryExecModeSimpleProtocol, nil
	case ProtocolExtended:
		return pgx.QueryExecModeExec, nil
	case ProtocolPrepared:
		return pgx.QueryExecModeCacheStatement, nil
	}
	return 0, fmt.Errorf("benchmarks: unknown protocol %q (want simple, extended or prepared)", string(p))
}

// Target is a named server to measure.
type Target struct {
	Name string
	DSN  string
}

// Process is a named process whose CPU and memory are sampled while targets run.
type Process struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
}

// ParseTarget parses "NAME=DSN". A bare DSN, URL or key=value, gets name.
func ParseTarget(s, name string) (Target, error) {
	if n, dsn, ok := strings.Cut(s, "="); ok && isName(n) && !libpqKeywords[n] {
		return Target{Name: n, DSN: dsn}, nil
	}
	if s == "" {
		return Target{}, fmt.Errorf("benchmarks: empty target")
	}
	return Target{Name: name, DSN: s}, nil
}

// ParseProcess parses "NAME=PID".
func ParseProcess(s string) (Process, error) {
	n, p, ok := strings.Cut(s, "=")
	if !ok || !isName(n) {
		return Process{}, fmt.Errorf("benchmarks: process %q: want NAME=PID", s)
	}
	pid, err := strconv.Atoi(p)
	if err != nil || pid <= 0 {
		return Process{}, fmt.Errorf("benchmarks: process %q: bad pid", s)
	}
	return Process{Name: n, PID: pid}, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func isName(s string) bool { return nameRE.MatchString(s) }

// libpqKeywords start a bare key=value DSN ("host=x port=5432"), which is not NAME=DSN.
var libpqKeywords = map[string]bool{
	"host": true, "hostaddr": true, "port": true, "dbname": true, "user": true, "password": true,
	"passfile": true, "sslmode": true, "connect_timeout": true, "application_name": true,
	"options": true, "service": true, "target_session_attrs": true,
}

// Progress says where live progress goes. Terminal selects a single line rewritten with '\r'.
type Progress struct {
	W        io.Writer
	Terminal bool
	Every    time.Duration // between plain lines when not a terminal
}

// Config describes a load run.
type Config struct {
	Targets  []Target
	Workload *Workload
	Protocol Protocol
	Clients  int
	// Rate is the total arrival rate per second of the open loop; 0 runs a closed loop.
	Rate float64
	// Duration is the measured time of each target, split evenly over Rounds.
	Duration time.Duration
	Rounds   int
	Scale    int // value of :scale

	Processes []Process

	// Grace is how long in-flight transactions may run past the end of a round before they are
	// cancelled (and counted as errors "canceled").
	Grace time.Duration
	// ConnectConcurrency bounds simultaneous connection attempts while clients connect.
	ConnectConcurrency int
	// SampleInterval is the period of throughput and process samples; default 1s.
	SampleInterval time.Duration
	// Seed makes a run's random choices repeatable; 0 picks one.
	Seed uint64

	Progress *Progress // nil: silent
}

func (c *Config) validate() error {
	if len(c.Targets) == 0 {
		return fmt.Errorf("benchmarks: no targets")
	}
	seen := map[string]bool{}
	for _, t := range c.Targets {
		if seen[t.Name] {
			return fmt.Errorf("benchmarks: duplicate target name %q", t.Name)
		}
		seen[t.Name] = true
	}
	if c.Workload == nil || len(c.Workload.Scripts) == 0 {
		return fmt.Errorf("benchmarks: no workload")
	}
	if _, err := c.Protocol.ExecMode(); err != nil {
		return err
	}
	if c.Clients < 1 {
		return fmt.Errorf("benchmarks: clients must be at least 1")
	}
	if c.Rate < 0 {
		return fmt.Errorf("benchmarks: negative rate")
	}
	if c.Rounds < 1 {
		return fmt.Errorf("benchmarks: rounds must be at least 1")
	}
	if c.Duration < time.Duration(c.Rounds)*time.Millisecond {
		return fmt.Errorf("benchmarks: duration %v too short for %d rounds", c.Duration, c.Rounds)
	}
	if c.Scale < 1 {
		c.Scale = 1
	}
	if c.ConnectConcurrency < 1 {
		c.ConnectConcurrency = 100
	}
	if c.SampleInterval <= 0 {
		c.SampleInterval = time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 5 * time.Second
	}
	return nil
}

var kvPassword = regexp.MustCompile(`(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// RedactDSN hides the password of a URL or key=value connection string.
func RedactDSN(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "(unparsable DSN)"
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
}
