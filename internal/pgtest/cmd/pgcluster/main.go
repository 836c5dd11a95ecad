// Command pgcluster starts a throwaway PostgreSQL primary plus streaming
// replicas for scripts (the benchmark suite, make run):
//
//	go run ./internal/pgtest/cmd/pgcluster -replicas 1 [-password X]
//
// It prints one line per cluster ("primary 127.0.0.1:PORT", then
// "replica 127.0.0.1:PORT" for each replica) followed by "ready", and runs
// until SIGINT, SIGTERM or SIGHUP, or until its standard input is closed,
// then stops the clusters and removes their files. A script that keeps a pipe
// to its stdin therefore cannot leak clusters even if it dies. Standard input
// that is /dev/null (a background job of a non-interactive shell) is not
// watched.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/asyncgate/asyncgate/internal/pgtest"
)

type settingsFlag map[string]string

func (s settingsFlag) String() string { return fmt.Sprint(map[string]string(s)) }

func (s settingsFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want name=value, got %q", v)
	}
	s[k] = val
	return nil
}

func main() {
	settings := settingsFlag{}
	replicas := flag.Int("replicas", 0, "number of streaming replicas")
	password := flag.String("password", "", "superuser password (default: trust auth)")
	maxConns := flag.Int("max-connections", 200, "max_connections")
	verbose := flag.Bool("v", false, "progress messages on stderr")
	flag.Var(settings, "set", "extra postgresql.conf `name=value` (repeatable)")
	flag.Parse()

	if err := run(*replicas, pgtest.Options{
		Password:       *password,
		MaxConnections: *maxConns,
		Settings:       settings,
		Log:            logWriter(*verbose),
	}); err != nil {
		fmt.Fprintln(os.Stderr, "pgcluster:", err)
		os.Exit(1)
	}
}

func logWriter(verbose bool) io.Writer {
	if verbose {
		return os.Stderr
	}
	return nil
}

func run(replicas int, opts pgtest.Options) error {
	// Notify before starting so a signal during startup still tears down.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	c, err := pgtest.StartWithReplicas(ctx, opts, replicas)
	if err != nil {
		return err
	}
	defer c.Stop()

	fmt.Printf("primary %s\n", c.Addr())
	for _, r := range c.Replicas() {
		fmt.Printf("replica %s\n", r.Addr())
	}
	fmt.Println("ready")

	stdinClosed := make(chan struct{})
	if watchStdin() {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			close(stdinClosed)
		}()
	}
	select {
	case <-ctx.Done():
	case <-stdinClosed:
	}
	return c.Stop()
}

// watchStdin reports whether stdin is something whose closing means "stop":
// anything but /dev/null, which is always at EOF.
func watchStdin() bool {
	in, err := os.Stdin.Stat()
	if err != nil {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(in, null)
}
