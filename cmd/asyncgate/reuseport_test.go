//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/internal/pgtest"
)

// A restart with --reuse-port refuses nobody: while a client connects in a loop, a second
// asyncgate starts on the same port and the first gets SIGTERM; every login succeeds.
func TestReusePortRestartLosesNoConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	// Closing a listener resets its queued connections unless the kernel migrates them
	// (tcp_migrate_req) or a reuseport BPF program steered new ones away; this kernel may have
	// no BPF, so the test turns migration on for its netns, as the README says to in production.
	const migrate = "/proc/sys/net/ipv4/tcp_migrate_req"
	if b, err := os.ReadFile(migrate); err != nil {
		t.Skipf("no %s (Linux before 5.14): %v", migrate, err)
	} else if strings.TrimSpace(string(b)) != "1" {
		if err := os.WriteFile(migrate, []byte("1"), 0o644); err != nil {
			t.Skipf("cannot set %s: %v", migrate, err)
		}
		t.Cleanup(func() { os.WriteFile(migrate, b, 0o644) })
	}
	cluster := pgtest.StartT(t, pgtest.Options{}, 0)
	bin := filepath.Join(t.TempDir(), "asyncgate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()

	// start runs the binary and returns once it logged that it listens.
	start := func(name string) *exec.Cmd {
		cmd := exec.Command(bin, "--listen", addr, "--reuse-port", "on", "--auth-type", "trust",
			"--pool-mode", "transaction", "--shutdown-timeout", "5s",
			"--database", "db="+cluster.DSN("postgres", "postgres"))
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		listening := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stderr)
			once := false
			for sc.Scan() {
				if !once && strings.Contains(sc.Text(), "asyncgate listening") {
					once = true
					close(listening)
				}
				if strings.Contains(sc.Text(), "level=WARN") || strings.Contains(sc.Text(), "level=ERROR") {
					t.Logf("%s: %s", name, sc.Text())
				}
			}
		}()
		select {
		case <-listening:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not start listening", name)
		}
		return cmd
	}

	first := start("first")
	var logins, failures atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		dsn := fmt.Sprintf("postgres://postgres@%s/db?sslmode=disable", addr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// An attempt is a login. A client that logged into the old process may still be
			// closed by its shutdown between transactions, as SIGTERM promises no more.
			c, err := pgconn.Connect(ctx, dsn)
			if err == nil {
				c.Close(ctx)
			}
			cancel()
			if err != nil {
				failures.Add(1)
				lastErr.Store(err)
			} else {
				logins.Add(1)
			}
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("still not true after 30s: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("logins through the first process", func() bool { return logins.Load() >= 50 })

	second := start("second")
	if err := first.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("first process after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("first process did not exit after SIGTERM")
	}
	mark := logins.Load()
	waitFor("logins through the second process", func() bool { return logins.Load() >= mark+50 })
	close(stop)
	<-done
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d connection attempts failed across the restart; last: %v", n, n+logins.Load(), lastErr.Load())
	}
	second.Process.Signal(syscall.SIGTERM)
}
