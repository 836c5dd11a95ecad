package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Credentials of the throwaway cluster and of the gateways' one client user. The cluster uses
// scram-sha-256 too, so a direct client authenticates the same way as a gateway client.
const (
	pgPassword  = "bench"
	appUser     = "app"
	appPassword = "app"
	database    = "postgres"
)

// proc is a long-running child (gateway, cluster) whose output goes to a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// startProc starts argv in its own process group, so that a Ctrl-C at the terminal reaches only
// the suite, which then stops its children in order. Pdeathsig covers a suite killed outright.
func startProc(name, logPath string, cred *syscall.Credential, argv ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM, Credential: cred}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: start: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM (PgBouncer's immediate shutdown) and kills the process if it is not gone
// within timeout. It reports a process that had already exited on its own.
func (p *proc) stop(timeout time.Duration) error {
	if p.exited() {
		return fmt.Errorf("%s had exited by itself: %v", p.name, p.waitErr)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s; killed", p.name, timeout)
	}
	return nil
}

// logTail returns the last n lines of the process's log that keep matches.
func (p *proc) logTail(n int, keep func(string) bool) []string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if l != "" && (keep == nil || keep(l)) {
			lines = append(lines, l)
		}
	}
	return lines[max(0, len(lines)-n):]
}

// cluster is a running pgcluster; it lives while the suite holds its stdin open.
type cluster struct {
	*proc
	stdin    io.WriteCloser
	primary  string   // host:port
	replicas []string // host:port of each streaming replica
}

func (s *suite) startCluster(ctx context.Context) (*cluster, error) {
	argv := []string{s.binPath("pgcluster"), "-replicas", strconv.Itoa(clusterReplicas), "-max-connections", strconv.Itoa(maxConnections), "-password", pgPassword}
	s.setup = append(s.setup, command{"cluster (kept alive by a pipe on its stdin)", shellJoin(argv)})

	cmd := exec.Command(argv[0], argv[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	logPath := s.workPath("pgcluster.log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: log: %w", err)
	}
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("pgcluster: start: %w", err)
	}
	c := &cluster{proc: &proc{name: "pgcluster", cmd: cmd, logPath: logPath, done: make(chan struct{})}, stdin: stdin}

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		c.waitErr = cmd.Wait()
		f.Close()
		close(c.done)
	}()

	timeout := time.After(3 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				<-c.done
				return nil, fmt.Errorf("pgcluster exited before ready: %v: %s", c.waitErr, strings.Join(c.logTail(10, nil), "\n"))
			}
			kind, addr, _ := strings.Cut(l, " ")
			switch kind {
			case "primary":
				c.primary = addr
			case "replica":
				c.replicas = append(c.replicas, addr)
			case "ready":
				go func() { // keep draining so pgcluster never blocks on a full pipe
					for range lines {
					}
				}()
				if c.primary == "" || len(c.replicas) != clusterReplicas {
					c.stop()
					return nil, fmt.Errorf("pgcluster: ready with primary %q and replicas %q, want %d", c.primary, c.replicas, clusterReplicas)
				}
				return c, nil
			}
		case <-timeout:
			c.stop()
			return nil, errors.New("pgcluster: not ready within 3 minutes")
		case <-ctx.Done():
			c.stop()
			return nil, ctx.Err()
		}
	}
}

// stop closes stdin, which pgcluster takes as the signal to stop, and SIGTERMs it as well.
func (c *cluster) stop() error {
	c.stdin.Close()
	if err := c.proc.stop(time.Minute); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

func (s *suite) directDSN() string {
	return fmt.Sprintf("postgres://postgres:%s@%s/%s?sslmode=disable&connect_timeout=10", pgPassword, s.cluster.primary, database)
}

func gatewayDSN(port int) string {
	return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=10", appUser, appPassword, port, database)
}

// gateway is a running asyncgate or PgBouncer.
type gateway struct {
	*proc
	port    int
	command string // as shown in the report
}

// startGateways starts asyncgate and PgBouncer with the same pool mode, pool size, client limit
// and client auth (scram-sha-256 from the same userlist), each connecting to the primary as
// postgres.
func (s *suite) startGateways(ctx context.Context, c benchCase) (ag, pgb *gateway, ini string, err error) {
	pgHost, pgPort, _ := net.SplitHostPort(s.cluster.primary)
	agPort, err := freePort()
	if err != nil {
		return nil, nil, "", err
	}
	bPort, err := freePort()
	if err != nil {
		return nil, nil, "", err
	}

	agArgv := []string{s.binPath("asyncgate"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", agPort),
		"--database", fmt.Sprintf("%s=postgres://postgres:%s@%s/%s?sslmode=disable", database, pgPassword, s.cluster.primary, database),
		"--auth-type", "scram-sha-256", "--auth-file", s.workPath("userlist.txt"),
		"--pool-mode", c.PoolMode, "--default-pool-size", strconv.Itoa(c.PoolSize),
		"--max-client-conn", "20000", "--log-level", "warn"}
	if c.Overload {
		agArgv = append(agArgv, overloadArgs(c)...)
	}
	p, err := startProc("asyncgate", s.workPath("asyncgate-"+c.Slug+".log"), nil, agArgv...)
	if err != nil {
		return nil, nil, "", err
	}
	ag = &gateway{proc: p, port: agPort, command: shellJoin(agArgv)}

	// The settings asyncgate has by its defaults are left at PgBouncer's defaults, which match
	// (server_reset_query DISCARD ALL, server_check_delay 30, server_idle_timeout 600,
	// server_lifetime 3600, query_wait_timeout 120). Connection logging is off because asyncgate
	// at --log-level warn logs none; listen_backlog matches Go's (net.core.somaxconn).
	var iniPath string
	iniPath, ini, err = s.writePgBouncerINI(c, pgHost, pgPort, bPort)
	if err != nil {
		ag.stop(10 * time.Second)
		return nil, nil, "", err
	}
	cred, err := postgresCredential()
	if err != nil {
		ag.stop(10 * time.Second)
		return nil, nil, "", err
	}
	bArgv := []string{s.pgbouncer, iniPath}
	p, err = startProc("pgbouncer", s.workPath("pgbouncer-"+c.Slug+".log"), cred, bArgv...)
	if err != nil {
		ag.stop(10 * time.Second)
		return nil, nil, "", err
	}
	pgb = &gateway{proc: p, port: bPort, command: "(as OS user postgres: PgBouncer refuses root) " + shellJoin(bArgv)}

	for _, g := range []*gateway{ag, pgb} {
		if err := waitLogin(ctx, g, 20*time.Second); err != nil {
			ag.stop(10 * time.Second)
			pgb.stop(10 * time.Second)
			return nil, nil, "", err
		}
	}
	return ag, pgb, ini, nil
}

// writePgBouncerINI writes PgBouncer's configuration for case c, in front of the backend at
// host:port, listening on bPort, and returns its path and text.
func (s *suite) writePgBouncerINI(c benchCase, host, port string, bPort int) (path, ini string, err error) {
	ini = fmt.Sprintf(`[databases]
%[1]s = host=%[2]s port=%[3]s dbname=%[1]s user=postgres password=%[4]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[5]d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %[6]s
pool_mode = %[7]s
default_pool_size = %[8]d
max_client_conn = 20000
listen_backlog = %[9]d
log_connections = 0
log_disconnections = 0
log_stats = 0
`, database, host, port, pgPassword, bPort, s.workPath("userlist.txt"), c.PoolMode, c.PoolSize, somaxconn())
	if c.Overload {
		ini += overloadINI()
	}
	path = s.workPath("pgbouncer-" + c.Slug + ".ini")
	if err := os.WriteFile(path, []byte(ini), 0o644); err != nil {
		return "", "", fmt.Errorf("pgbouncer ini: %w", err)
	}
	return path, ini, nil
}

// waitLogin polls until a client can log in through g and run a query.
func waitLogin(ctx context.Context, g *gateway, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := tryQuery(ctx, gatewayDSN(g.port))
		if err == nil {
			return nil
		}
		if g.exited() {
			return fmt.Errorf("%s exited at start: %v: %s", g.name, g.waitErr, strings.Join(g.logTail(10, nil), "\n"))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no login within %s: %w", g.name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tryQuery(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "select 1").ReadAll()
	return err
}

func (s *suite) writeUserlist() error {
	line := fmt.Sprintf("%q %q\n", appUser, appPassword)
	if err := os.WriteFile(s.workPath("userlist.txt"), []byte(line), 0o644); err != nil {
		return fmt.Errorf("userlist: %w", err)
	}
	return nil
}

func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: OS user postgres: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// ensurePgBouncer finds pgbouncer, installing Debian's package when it is missing.
func ensurePgBouncer(ctx context.Context) (string, error) {
	if p, err := lookPgBouncer(); err == nil {
		return p, nil
	}
	logf("pgbouncer not found; installing Debian's pgbouncer package")
	for _, argv := range [][]string{{"apt-get", "update", "-qq"}, {"apt-get", "install", "-y", "-qq", "pgbouncer"}} {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("install pgbouncer: %s: %w", strings.Join(argv, " "), err)
		}
	}
	return lookPgBouncer()
}

func lookPgBouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	const sbin = "/usr/sbin/pgbouncer" // not on every PATH
	if _, err := os.Stat(sbin); err != nil {
		return "", fmt.Errorf("pgbouncer not found: %w", err)
	}
	return sbin, nil
}

// raiseFileLimit sets the open-files limit that the children inherit: 10,000 idle clients need
// as many sockets in the gateway (and in asyncgate-bench). Root may raise the hard limit too.
func raiseFileLimit() (uint64, error) {
	const want = 65536
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
	}
	lim.Cur = min(max(lim.Cur, want), lim.Max)
	// Setting it explicitly also makes Go pass it to children instead of the original soft limit.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("setrlimit: %w", err)
	}
	return lim.Cur, nil
}

// portRange, when set (-ports), is where the gateways listen: on a machine shared with other
// runs, each gets its own range.
var portRange [2]int

func freePort() (int, error) {
	for p := portRange[0]; p > 0 && p <= portRange[1]; p++ {
		if portsTaken[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			portsTaken[p] = true
			return p, nil
		}
	}
	if portRange[0] > 0 {
		return 0, fmt.Errorf("free port: none left in -ports %d-%d", portRange[0], portRange[1])
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// portsTaken are the ports of -ports handed out already: a gateway stopped at the end of a case
// may leave its port in TIME_WAIT, and a port handed out is not listened on until its process
// starts.
var portsTaken = map[int]bool{}

func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 128
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 128
	}
	return n
}

// tailBuffer keeps what was written, for the last lines of a failed command's output.
type tailBuffer struct{ bytes.Buffer }

func (t *tailBuffer) lines(n int) []string {
	ls := strings.Split(strings.TrimRight(t.String(), "\n"), "\n")
	return ls[max(0, len(ls)-n):]
}

// shellJoin quotes argv for a POSIX shell.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@+%", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
