package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

// Every cluster is stopped by the end, so nothing may be left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestReplication(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	primary := StartT(t, Options{}, 1)

	replicas := primary.Replicas()
	if len(replicas) != 1 {
		t.Fatalf("Replicas() = %d, want 1", len(replicas))
	}
	replica := replicas[0]
	if replica.Primary != primary || primary.Primary != nil {
		t.Fatal("Primary links are wrong")
	}
	if replica.Port == primary.Port {
		t.Fatal("replica shares the primary's port")
	}
	if os.Geteuid() == 0 {
		assertOwnedByPostgres(t, primary.Dir)
		assertOwnedByPostgres(t, replica.Dir)
	}

	// Several rounds: each write must be visible right after WaitReplay,
	// even though commits on the primary are asynchronous.
	if err := primary.Exec(ctx, "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := primary.Exec(ctx, "INSERT INTO t VALUES ("+strconv.Itoa(i)+")"); err != nil {
			t.Fatal(err)
		}
		if err := replica.WaitReplay(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := replica.QueryValue(ctx, "SELECT count(*) FROM t")
		if err != nil {
			t.Fatal(err)
		}
		if want := strconv.Itoa(i + 1); got != want {
			t.Fatalf("round %d: replica sees %s rows, want %s", i, got, want)
		}
	}

	err := replica.Exec(ctx, "INSERT INTO t VALUES (42)")
	if code := sqlState(err); code != "25006" {
		t.Fatalf("write on replica: err = %v (SQLSTATE %q), want 25006", err, code)
	}
	if err := primary.WaitReplay(ctx); err == nil {
		t.Fatal("WaitReplay on a primary succeeded")
	}

	if tail := primary.LogTail(50); !strings.Contains(tail, "database system is ready") {
		t.Fatalf("primary log tail lacks the ready message:\n%s", tail)
	}
	for _, c := range []*Cluster{primary, replica} {
		if got, err := c.QueryValue(ctx, "SHOW max_connections"); err != nil || got != "200" {
			t.Fatalf("%s max_connections = %q, %v; want 200", c.role(), got, err)
		}
		if got, err := c.QueryValue(ctx, "SHOW unix_socket_directories"); err != nil || got != c.base {
			t.Fatalf("%s unix_socket_directories = %q, %v; want the cluster temp dir", c.role(), got, err)
		}
	}

	// Stop takes the replicas with it and leaves nothing behind.
	var dirs, addrs []string
	for _, c := range []*Cluster{primary, replica} {
		dirs = append(dirs, c.Dir, c.base)
		addrs = append(addrs, c.Addr())
	}
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := primary.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if n := len(primary.Replicas()); n != 0 {
		t.Fatalf("Replicas() after Stop = %d", n)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Stop (err %v)", dir, err)
		}
	}
	for _, addr := range addrs {
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			t.Errorf("%s still accepting after Stop", addr)
		}
	}
	if _, err := primary.AddReplica(ctx); err == nil {
		t.Error("AddReplica on a stopped primary succeeded")
	}
}

func assertOwnedByPostgres(t *testing.T, dir string) {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; strconv.Itoa(int(uid)) != u.Uid {
		t.Fatalf("%s owned by uid %d, want postgres (%s)", dir, uid, u.Uid)
	}
}

func TestPassword(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const password = "s3cr'et pass"
	primary := StartT(t, Options{
		Password:       password,
		MaxConnections: 30,
		Settings:       map[string]string{"work_mem": "3MB", "application_name": "it's pgtest"},
	}, 1)
	replica := primary.Replicas()[0]

	for _, c := range []*Cluster{primary, replica} {
		_, err := pgconn.Connect(ctx, c.DSNWithPassword("postgres", "wrong", "postgres"))
		if code := sqlState(err); code != "28P01" {
			t.Fatalf("%s wrong password: err = %v (SQLSTATE %q), want 28P01", c.role(), err, code)
		}
		_, err = pgconn.Connect(ctx, c.DSNWithPassword("postgres", "", "postgres"))
		if err == nil {
			t.Fatalf("%s accepted a connection without password", c.role())
		}
		conn, err := pgconn.Connect(ctx, c.DSN("postgres", "postgres"))
		if err != nil {
			t.Fatalf("%s right password: %v", c.role(), err)
		}
		conn.Close(ctx)

		for setting, want := range map[string]string{
			"work_mem":            "3MB",
			"application_name":    "it's pgtest",
			"max_connections":     "30",
			"password_encryption": "scram-sha-256",
			"fsync":               "off",
			"synchronous_commit":  "off",
			"listen_addresses":    "127.0.0.1",
		} {
			// application_name is a session setting the DSN does not override,
			// so SHOW reports the configured default.
			got, err := c.QueryValue(ctx, "SHOW "+setting)
			if err != nil || got != want {
				t.Errorf("%s: SHOW %s = %q, %v; want %q", c.role(), setting, got, err, want)
			}
		}
	}
	got, err := primary.QueryValue(ctx, "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'postgres'")
	if err != nil || got != "SCRAM-SHA-256" {
		t.Fatalf("stored password = %q, %v; want a SCRAM verifier", got, err)
	}
}

// A port taken between picking and binding must not fail the start.
func TestPortClashRetries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port

	picks := 0
	opts := Options{
		pickPort: func() (int, error) {
			picks++
			if picks == 1 {
				return taken, nil
			}
			return freePort()
		},
		noTemplate: true, // exercise plain initdb too
	}
	c := StartT(t, opts, 0)
	if c.Port == taken || picks < 2 {
		t.Fatalf("port = %d after %d picks; want a retry away from %d", c.Port, picks, taken)
	}
	if err := c.Exec(testCtx(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestStartFailureReportsLog(t *testing.T) {
	t.Parallel()
	_, err := Start(testCtx(t), Options{Settings: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		t.Fatal("Start with a bad setting succeeded")
	}
	if !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) {
		t.Fatalf("error lacks the server log tail: %v", err)
	}
	// The log path in the message names the cluster's directory, which a
	// failed start must not leave behind.
	m := regexp.MustCompile(`\((/\S+)/postgres\.log\)`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error does not name the log file: %v", err)
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left behind after a failed start (err %v)", m[1], err)
	}
}

// The servers must not outlive a test process that dies without cleaning
// up, and the directories it left must be swept by the next user.
func TestOwnerDeathKillsServer(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOwner$")
	cmd.Env = append(os.Environ(), "PGTEST_HELPER_OWNER=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	var base string
	if _, err := fmt.Fscan(bufio.NewReader(stdout), &pid, &base); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper did not report its cluster: %v", err)
	}
	if !pidAlive(pid) {
		t.Fatalf("postmaster %d not running", pid)
	}

	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for pidAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("postmaster %d outlived its owner", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sweepStale()
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		os.RemoveAll(base)
		t.Fatalf("%s not swept after its owner died (err %v)", base, err)
	}
}

func TestHelperOwner(t *testing.T) {
	if os.Getenv("PGTEST_HELPER_OWNER") != "1" {
		t.Skip("helper process for TestOwnerDeathKillsServer")
	}
	c, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(c.proc.cmd.Process.Pid, c.base)
	io.Copy(io.Discard, os.Stdin) // killed before this returns
	c.Stop()
}
