// Package pgtest starts throwaway PostgreSQL clusters — a primary and
// optional streaming replicas — for tests, benchmarks and the dev
// environment.
//
// Every cluster lives in its own temporary directory (data directory, Unix
// socket and server log), listens on a free port on 127.0.0.1 and is tuned
// for speed rather than durability (fsync, synchronous_commit and
// full_page_writes off). When the calling process runs as root the servers
// run as the postgres OS user. Servers die with the calling process, and
// Stop removes everything; directories left by a process that was killed are
// swept by the next one.
//
// Directories go under /dev/shm when it is a tmpfs with room to spare (a
// cluster starts about ten times faster there), else under os.TempDir, and
// data directories are copied from an initdb template cached next to them.
// Environment overrides: PGTEST_BINDIR (server binaries), PGTEST_TMPDIR
// (where directories go), PGTEST_NO_TEMPLATE=1 (run initdb every time).
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultTimeout bounds starting a cluster and WaitReplay when the context
// has no deadline of its own.
const DefaultTimeout = 30 * time.Second

// Options configures a cluster. Replicas inherit their primary's options.
type Options struct {
	Password       string            // superuser password; "" = trust auth
	MaxConnections int               // default 200
	Settings       map[string]string // extra postgresql.conf settings
	Log            io.Writer         // optional: progress messages

	// StartTimeout bounds each start when ctx has no deadline; default
	// DefaultTimeout.
	StartTimeout time.Duration

	// For this package's tests: force a port clash, skip the template.
	pickPort   func() (int, error)
	noTemplate bool
}

// Cluster is a running PostgreSQL server started by this package.
type Cluster struct {
	Host    string // "127.0.0.1"
	Port    int
	Dir     string // data directory
	BinDir  string
	Primary *Cluster // nil for a primary; the primary for a replica

	opts    Options
	base    string // temp dir holding Dir, the socket and the log
	logPath string
	cred    *syscall.Credential // nil: run as the current user
	proc    *process

	mu       sync.Mutex
	replicas []*Cluster
	stopped  bool
}

// Start initialises and starts a new primary cluster.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = 200
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultTimeout
	}
	ctx, cancel := withDefaultTimeout(ctx, opts.StartTimeout)
	defer cancel()

	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	c, err := newCluster(opts, bin, cred, nil)
	if err != nil {
		return nil, err
	}
	begin := time.Now()
	if err := c.initdb(ctx); err != nil {
		c.shutdown()
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		c.shutdown()
		return nil, err
	}
	c.logf("pgtest: primary ready on %s in %v (%s)", c.Addr(), time.Since(begin).Round(time.Millisecond), c.Dir)
	return c, nil
}

// StartWithReplicas starts a primary and n streaming replicas of it. On
// error nothing is left running.
func StartWithReplicas(ctx context.Context, opts Options, n int) (*Cluster, error) {
	c, err := Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	for range n {
		if _, err := c.AddReplica(ctx); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// AddReplica takes a base backup of c and starts it as a hot-standby
// streaming replica on its own port. It returns once the replica accepts
// connections and is in recovery.
func (c *Cluster) AddReplica(ctx context.Context) (*Cluster, error) {
	if c.Primary != nil {
		return nil, errors.New("pgtest: AddReplica: cascading replicas are not supported; call it on the primary")
	}
	if c.isStopped() {
		return nil, errors.New("pgtest: AddReplica: primary is stopped")
	}
	ctx, cancel := withDefaultTimeout(ctx, c.opts.StartTimeout)
	defer cancel()

	r, err := newCluster(c.opts, c.BinDir, c.cred, c)
	if err != nil {
		return nil, err
	}
	begin := time.Now()
	var env []string
	if c.opts.Password != "" {
		env = append(env, "PGPASSWORD="+c.opts.Password)
	}
	// -R writes standby.signal and primary_conninfo (with the password, if
	// any); -X stream makes the copy self-consistent.
	err = r.run(ctx, "pg_basebackup", env,
		"-D", r.Dir, "-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", "postgres",
		"-R", "-X", "stream", "-c", "fast", "--no-sync", "-w")
	if err == nil {
		err = r.start(ctx)
	}
	if err != nil {
		r.shutdown()
		return nil, err
	}

	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		r.shutdown()
		return nil, errors.New("pgtest: AddReplica: primary stopped meanwhile")
	}
	c.replicas = append(c.replicas, r)
	c.mu.Unlock()
	r.logf("pgtest: replica of %s ready on %s in %v", c.Addr(), r.Addr(), time.Since(begin).Round(time.Millisecond))
	return r, nil
}

// Replicas returns the running replicas of c.
func (c *Cluster) Replicas() []*Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.replicas)
}

// Addr returns "127.0.0.1:port".
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// DSN returns a URL connection string for user and database. Options.Password,
// when set, is included whatever the user, which suits roles a test creates
// with the same password; use DSNWithPassword for others.
func (c *Cluster) DSN(user, database string) string {
	return c.DSNWithPassword(user, c.opts.Password, database)
}

// DSNWithPassword is DSN with an explicit password ("" = none).
func (c *Cluster) DSNWithPassword(user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(user),
		Host:     c.Addr(),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	if password != "" {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

// Connect opens a connection as the superuser to database postgres.
func (c *Cluster) Connect(ctx context.Context) (*pgconn.PgConn, error) {
	conn, err := pgconn.Connect(ctx, c.DSN("postgres", "postgres"))
	if err != nil {
		return nil, fmt.Errorf("pgtest: connect %s: %w", c.Addr(), err)
	}
	return conn, nil
}

// Exec runs sql (one or more statements, simple protocol) as the superuser
// on database postgres. Server errors are returned as *pgconn.PgError
// (wrapped).
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	conn, err := c.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("pgtest: exec on %s: %w", c.Addr(), err)
	}
	return nil
}

// QueryValue runs one statement as the superuser on database postgres and
// returns the first column of its first row as text ("" for NULL).
func (c *Cluster) QueryValue(ctx context.Context, sql string) (string, error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	return queryValue(ctx, conn, sql)
}

func queryValue(ctx context.Context, conn *pgconn.PgConn, sql string, args ...string) (string, error) {
	row, err := queryRow(ctx, conn, sql, args...)
	if err != nil {
		return "", err
	}
	return row[0], nil
}

// queryRow runs sql with text parameters (extended protocol) and returns the
// first row as text.
func queryRow(ctx context.Context, conn *pgconn.PgConn, sql string, args ...string) ([]string, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	res := conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fmt.Errorf("pgtest: query %q: %w", sql, res.Err)
	}
	if len(res.Rows) == 0 || len(res.Rows[0]) == 0 {
		return nil, fmt.Errorf("pgtest: query %q returned no rows", sql)
	}
	row := make([]string, len(res.Rows[0]))
	for i, v := range res.Rows[0] {
		row[i] = string(v)
	}
	return row, nil
}

// WaitReplay waits until replica c has replayed everything committed on its
// primary before the call, so a test can write on the primary and then read
// on the replica.
func (c *Cluster) WaitReplay(ctx context.Context) error {
	if c.Primary == nil {
		return errors.New("pgtest: WaitReplay: not a replica")
	}
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()

	target, err := c.Primary.flushedLSN(ctx)
	if err != nil {
		return err
	}
	conn, err := c.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		row, err := queryRow(ctx, conn, `SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false),
			coalesce(pg_last_wal_replay_lsn()::text, 'none')`, target)
		if err != nil {
			return fmt.Errorf("pgtest: WaitReplay %s: %w", c.Addr(), err)
		}
		if row[0] == "t" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: WaitReplay %s: replayed %s, want %s: %w\n%s",
				c.Addr(), row[1], target, ctx.Err(), c.logSection())
		case <-tick.C:
		}
	}
}

// flushedLSN returns a WAL position at or after every commit made so far.
// Commits are asynchronous (synchronous_commit=off), so the last ones may sit
// in WAL buffers that no replica can see yet; one synchronous commit flushes
// everything before it. The commit must be of a transaction that wrote WAL
// (a transactional message does): others are never flushed synchronously.
func (c *Cluster) flushedLSN(ctx context.Context) (string, error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	// Separate statements: in one simple query they would share a
	// transaction, committing only after the LSN was read.
	for _, sql := range []string{"SET synchronous_commit = on", "SELECT pg_logical_emit_message(true, 'pgtest', 'flush')"} {
		if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
			return "", fmt.Errorf("pgtest: flush WAL on %s: %w", c.Addr(), err)
		}
	}
	return queryValue(ctx, conn, "SELECT pg_current_wal_lsn()::text")
}

// Stop shuts down c and its replicas and removes their directories. It is
// idempotent.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	replicas := c.replicas
	c.replicas = nil
	c.mu.Unlock()

	var errs []error
	for _, r := range replicas {
		errs = append(errs, r.Stop())
	}
	errs = append(errs, c.shutdown())
	if p := c.Primary; p != nil {
		p.mu.Lock()
		p.replicas = slices.DeleteFunc(p.replicas, func(r *Cluster) bool { return r == c })
		p.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Kill shuts c's server down at once, as `pg_ctl stop -m immediate` does (SIGQUIT): its
// backends end their connections without finishing what they run. c keeps its directory and
// port, for Restart. A replica's primary keeps running.
func (c *Cluster) Kill() {
	if p := c.proc; p != nil {
		p.stop(10 * time.Second)
	}
}

// Restart starts c's server again after Kill, on the same port, and waits until it is ready
// (a replica: in recovery again).
func (c *Cluster) Restart(ctx context.Context) error {
	if c.isStopped() {
		return errors.New("pgtest: Restart: cluster is stopped")
	}
	if p := c.proc; p != nil && !p.exited() {
		return errors.New("pgtest: Restart: server is running")
	}
	ctx, cancel := withDefaultTimeout(ctx, c.opts.StartTimeout)
	defer cancel()
	return c.startOnce(ctx)
}

func (c *Cluster) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// shutdown stops the server, if any, and removes the cluster's directory.
func (c *Cluster) shutdown() error {
	if c.proc != nil {
		c.proc.stop(10 * time.Second)
	}
	if c.Port != 0 {
		releasePort(c.Port)
	}
	if err := os.RemoveAll(c.base); err != nil {
		return fmt.Errorf("pgtest: remove %s: %w", c.base, err)
	}
	return nil
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *Cluster) logSection() string {
	return "--- server log tail (" + c.logPath + ") ---\n" + c.LogTail(30)
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Log != nil {
		fmt.Fprintf(c.opts.Log, format+"\n", args...)
	}
}

func (c *Cluster) role() string {
	if c.Primary != nil {
		return "replica"
	}
	return "primary"
}

func newCluster(opts Options, bin string, cred *syscall.Credential, primary *Cluster) (*Cluster, error) {
	sweepOnce.Do(sweepStale)
	base, err := os.MkdirTemp(tempRoot(), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	c := &Cluster{
		Host:    "127.0.0.1",
		Dir:     filepath.Join(base, "data"),
		BinDir:  bin,
		Primary: primary,
		opts:    opts,
		base:    base,
		logPath: filepath.Join(base, "postgres.log"),
		cred:    cred,
	}
	err = os.WriteFile(filepath.Join(base, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if err == nil {
		err = chown(base, cred)
	}
	if err != nil {
		os.RemoveAll(base)
		return nil, fmt.Errorf("pgtest: prepare %s: %w", base, err)
	}
	return c, nil
}

// run runs a PostgreSQL tool as the server user and returns its output in
// the error if it fails.
func (c *Cluster) run(ctx context.Context, name string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.base
	cmd.Env = childEnv(c.base, env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = procAttr(c.cred)
	// initdb runs postgres children in its process group; take them too.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("pgtest: %s: %w", name, err)
	}
	<-p.done
	if p.err != nil {
		if ctx.Err() != nil {
			p.err = fmt.Errorf("%w (%w)", ctx.Err(), p.err)
		}
		return fmt.Errorf("pgtest: %s: %w\n%s", name, p.err, lastLines(out.String(), 20))
	}
	return nil
}

// initdb creates the data directory, from the cached template when it can.
func (c *Cluster) initdb(ctx context.Context) error {
	if c.useTemplate() {
		tmpl, err := c.initTemplate(ctx)
		if err == nil {
			if err = copyTree(tmpl, c.Dir, c.cred); err == nil {
				return c.writeConfig()
			}
			os.RemoveAll(c.Dir)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("pgtest: initdb: %w", err)
		}
		c.logf("pgtest: template unusable, running initdb: %v", err)
	}
	c.logf("pgtest: initdb %s", c.Dir)
	if err := c.runInitdb(ctx, c.base, c.Dir); err != nil {
		return err
	}
	return c.writeConfig()
}

// runInitdb runs initdb for dataDir; scratch holds the password file.
func (c *Cluster) runInitdb(ctx context.Context, scratch, dataDir string) error {
	args := []string{"-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"}
	if c.opts.Password != "" {
		pwfile := filepath.Join(scratch, "pwfile")
		err := os.WriteFile(pwfile, []byte(c.opts.Password+"\n"), 0o600)
		if err == nil {
			err = chown(pwfile, c.cred)
		}
		if err != nil {
			return fmt.Errorf("pgtest: initdb: pwfile: %w", err)
		}
		defer os.Remove(pwfile)
		args = append(args, "--pwfile="+pwfile)
	}
	return c.run(ctx, "initdb", nil, args...)
}

// writeConfig writes pg_hba.conf and appends the test settings to
// postgresql.conf. Replicas get both through the base backup.
func (c *Cluster) writeConfig() error {
	if err := c.writeConfigFiles(); err != nil {
		return fmt.Errorf("pgtest: config: %w", err)
	}
	return nil
}

func (c *Cluster) writeConfigFiles() error {
	method := "trust"
	if c.opts.Password != "" {
		method = "scram-sha-256"
	}
	// The socket lives in a 0700 directory, so trusting local connections
	// opens nothing to other users.
	hba := fmt.Sprintf(`# generated by pgtest
local all         all              trust
local replication all              trust
host  all         all 127.0.0.1/32 %[1]s
host  replication all 127.0.0.1/32 %[1]s
`, method)
	if err := os.WriteFile(filepath.Join(c.Dir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return err
	}

	settings := map[string]string{
		"listen_addresses":    "127.0.0.1",
		"max_connections":     strconv.Itoa(c.opts.MaxConnections),
		"shared_buffers":      "16MB",
		"fsync":               "off",
		"synchronous_commit":  "off",
		"full_page_writes":    "off",
		"wal_level":           "replica",
		"max_wal_senders":     "16",
		"wal_keep_size":       "64MB",
		"hot_standby":         "on",
		"logging_collector":   "off",
		"log_destination":     "stderr",
		"log_line_prefix":     "%m [%p] ",
		"password_encryption": "scram-sha-256",
		// Segments in the data directory go away with it even when the
		// server was killed; posix ones would pile up in /dev/shm.
		"dynamic_shared_memory_type": "mmap",
	}
	var conf strings.Builder
	conf.WriteString("\n# added by pgtest\n")
	writeSettings(&conf, settings)
	writeSettings(&conf, c.opts.Settings) // later lines win
	f, err := os.OpenFile(filepath.Join(c.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(conf.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeSettings(w *strings.Builder, settings map[string]string) {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
}

var errPortInUse = errors.New("port in use")

// start starts the postmaster on a free port, retrying with another port if
// the chosen one was taken meanwhile, and waits until it is ready.
func (c *Cluster) start(ctx context.Context) error {
	pick := c.opts.pickPort
	if pick == nil {
		pick = freePort
	}
	var err error
	for range 5 {
		var port int
		if port, err = pick(); err != nil {
			return err
		}
		c.Port = port
		if err = c.startOnce(ctx); !errors.Is(err, errPortInUse) {
			return err
		}
		releasePort(port)
		c.Port = 0
		c.logf("pgtest: port %d in use, retrying", port)
	}
	return err
}

func (c *Cluster) startOnce(ctx context.Context) error {
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err == nil {
		err = chown(c.logPath, c.cred)
	}
	if err != nil {
		return fmt.Errorf("pgtest: server log: %w", err)
	}
	defer logFile.Close()
	// The clash check looks only at what this attempt logged.
	logStart, _ := logFile.Seek(0, io.SeekEnd)

	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"),
		"-D", c.Dir, "-p", strconv.Itoa(c.Port), "-k", c.base,
		"-c", "listen_addresses=127.0.0.1")
	cmd.Dir = c.base
	cmd.Env = childEnv(c.base)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = procAttr(c.cred)
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.proc = p

	err = c.waitReady(ctx)
	if err == nil {
		return nil
	}
	p.stop(10 * time.Second)
	c.proc = nil
	if log := c.logFrom(logStart); strings.Contains(log, "could not bind") ||
		strings.Contains(log, "could not create any TCP/IP sockets") {
		return fmt.Errorf("pgtest: %s on port %d: %w", c.role(), c.Port, errPortInUse)
	}
	return fmt.Errorf("pgtest: %s on %s not ready: %w\n%s", c.role(), c.Addr(), err, c.logSection())
}

func (c *Cluster) logFrom(offset int64) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	return string(b[offset:])
}

// waitReady polls until the server accepts connections and, for a replica,
// is in recovery.
func (c *Cluster) waitReady(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-c.proc.done:
			return fmt.Errorf("postgres exited: %v", c.proc.err)
		default:
		}
		ready, err := c.probe(ctx)
		if ready {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-c.proc.done:
			return fmt.Errorf("postgres exited: %v", c.proc.err)
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

func (c *Cluster) probe(ctx context.Context) (bool, error) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(pctx, c.DSN("postgres", "postgres"))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	dir, err := queryValue(pctx, conn, "SELECT current_setting('data_directory')")
	if err != nil {
		return false, err
	}
	if dir != c.Dir {
		// Someone else owns this port; our server will fail to bind and exit.
		return false, fmt.Errorf("port %d is served by %s", c.Port, dir)
	}
	inRecovery, err := queryValue(pctx, conn, "SELECT pg_is_in_recovery()")
	if err != nil {
		return false, err
	}
	if want := c.Primary != nil; (inRecovery == "t") != want {
		return false, fmt.Errorf("pg_is_in_recovery() = %s", inRecovery)
	}
	return true, nil
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
