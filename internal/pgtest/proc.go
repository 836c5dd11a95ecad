package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BinDir returns the directory holding the PostgreSQL server binaries. It
// honours $PGTEST_BINDIR, then `pg_config --bindir`, then the newest
// /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	binDirOnce.Do(func() { binDir, binDirErr = findBinDir() })
	return binDir, binDirErr
}

var (
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
)

func findBinDir() (string, error) {
	if dir := os.Getenv("PGTEST_BINDIR"); dir != "" {
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("pgtest: PGTEST_BINDIR=%s has no initdb/postgres", dir)
		}
		return dir, nil
	}
	// On Debian pg_config may belong to libpq-dev and point at a directory
	// without server binaries, so the answer is checked before it is trusted.
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", errors.New("pgtest: no PostgreSQL server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)")
}

// pgVersion extracts the numeric version from /usr/lib/postgresql/<v>/bin so
// that 10 sorts above 9.6.
func pgVersion(dir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	return v
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres", "pg_basebackup"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

// serverCredential returns the credential the server processes run under:
// the postgres OS user when we are root (postgres refuses to run as root),
// nil (the current user) otherwise.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root needs a postgres OS user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	return os.Chown(path, int(cred.Uid), int(cred.Gid))
}

func procAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		// Own process group: a terminal's Ctrl-C must not reach the servers
		// directly (we shut them down in order), and the whole group can be
		// killed at once.
		Setpgid: true,
		// If this process dies without cleaning up, the server dies too.
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
	}
}

// childEnv is the environment for PostgreSQL tools: PG* variables from the
// caller (PGHOST, PGPORT, PGDATA...) would silently redirect them.
func childEnv(home string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") ||
			k == "LANG" || k == "HOME" || k == "TZ" {
			continue
		}
		env = append(env, kv)
	}
	// TZ set spares initdb its time zone probe and makes clusters
	// deterministic; HOME points somewhere the postgres user can read.
	env = append(env, "LC_ALL=C", "TZ=UTC", "HOME="+home)
	return append(env, extra...)
}

// process is a started child process and the thread that forked it.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // result of Wait, valid after done is closed
}

// startProcess starts cmd from a goroutine locked to its OS thread, which
// lives exactly as long as the child: Pdeathsig fires when the forking
// *thread* exits (go.dev/issue/27505), so forking from an arbitrary runtime
// thread could kill the server early.
func startProcess(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread is discarded when this goroutine returns,
		// which happens only after the child is gone.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop shuts the postmaster down immediately (SIGQUIT, what pg_ctl stop -m
// immediate sends) and falls back to killing its process group.
func (p *process) stop(timeout time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// Ports handed out by this process; kept until the cluster stops so two
// clusters starting at once cannot be given the same port.
var usedPorts sync.Map

func freePort() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("pgtest: pick port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if _, taken := usedPorts.LoadOrStore(port, struct{}{}); !taken {
			return port, nil
		}
	}
	return 0, errors.New("pgtest: pick port: no unused port found")
}

func releasePort(port int) { usedPorts.Delete(port) }

const ownerFile = "pgtest.owner"

// tempRoot is where cluster directories and the template cache live:
// $PGTEST_TMPDIR, else /dev/shm when it is a roomy tmpfs, else the usual
// temp dir. On tmpfs, creating a cluster costs a tenth of what it does on a
// disk, even with fsync off.
func tempRoot() string {
	tempRootOnce.Do(func() {
		tempRootDir = os.Getenv("PGTEST_TMPDIR")
		if tempRootDir == "" {
			tempRootDir = os.TempDir()
			var st syscall.Statfs_t
			const tmpfsMagic = 0x01021994
			if syscall.Statfs("/dev/shm", &st) == nil && st.Type == tmpfsMagic &&
				st.Bavail*uint64(st.Bsize) >= 2<<30 && syscall.Access("/dev/shm", 2 /* W_OK */) == nil {
				tempRootDir = "/dev/shm"
			}
		}
	})
	return tempRootDir
}

var (
	tempRootOnce sync.Once
	tempRootDir  string
)

// sweepStale removes cluster directories left behind by processes that died
// without cleaning up (killed test binaries, `go test -timeout` panics).
// Their servers died with them through Pdeathsig; a directory is removed only
// if both its owner and its postmaster are gone.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(tempRoot(), "pgtest-*"))
	if tempRoot() != os.TempDir() {
		more, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgtest-*"))
		dirs = append(dirs, more...)
	}
	for _, dir := range dirs {
		owner := readPID(filepath.Join(dir, ownerFile))
		if owner == 0 {
			continue // not ours, or still being created
		}
		if pidAlive(owner) || pidAlive(readPID(filepath.Join(dir, "data", "postmaster.pid"))) {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

var sweepOnce sync.Once

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A killed process stays a zombie until reaped, which some init
	// processes are slow to do.
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name, which may itself contain ")".
	state := strings.TrimSpace(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return !strings.HasPrefix(state, "Z")
}
