package loop

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// child runs this test binary as a server in a process of its own (so its descriptor limit and
// memory can be measured or lowered alone), with env naming the role. It returns the first line
// the child prints and a function asking it to print more.
type child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	line string
}

func startChild(t *testing.T, test string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() {
		in.Close()
		io.Copy(io.Discard, c.out)
		cmd.Wait()
	})
	c.line = c.ask(t, "")
	return c
}

// ask sends a command line (none if empty) and returns the child's next line that is not the
// test framework's.
func (c *child) ask(t *testing.T, cmd string) string {
	t.Helper()
	if cmd != "" {
		fmt.Fprintln(c.in, cmd)
	}
	for {
		line, err := c.out.ReadString('\n')
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		if strings.HasPrefix(line, "@ ") {
			return strings.TrimSpace(line[2:])
		}
	}
}

// childServe is the child side: an echo server of the kind env names, answering the parent's
// commands on stdin until it closes.
func childServe(t *testing.T, kind string, setup func(addr string) string, cmds func(cmd string) string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	var wg sync.WaitGroup
	var d Driver
	if kind == "tcpconn" {
		// Only accepted and held: what keeping a *net.TCPConn per connection costs.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, nc)
				mu.Unlock()
			}
		}()
	} else {
		d = newDriver(t, kind, Config{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.Serve(ln, func(c Conn) Handler { return &echo{c: c} })
		}()
	}
	fmt.Printf("@ %s\n", setup(ln.Addr().String()))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		mu.Lock()
		n := len(held)
		mu.Unlock()
		fmt.Printf("@ %s %d\n", cmds(sc.Text()), n)
	}
	ln.Close()
	if d != nil {
		d.Shutdown()
	}
	wg.Wait()
	for _, nc := range held {
		nc.Close()
	}
}

func openFiles(t *testing.T) (n, highest int) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		highest = max(highest, fd)
	}
	return len(ents), highest
}

func TestEMFILEChild(t *testing.T) {
	kind := os.Getenv("LOOP_EMFILE_CHILD")
	if kind == "" {
		t.Skip("helper process for TestAcceptOutOfDescriptors")
	}
	childServe(t, kind, func(addr string) string {
		// Room for a few more descriptors only: the lowest free numbers are used first.
		open, highest := openFiles(t)
		limit := uint64(highest + 1 + 3)
		var lim syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		lim.Cur = limit
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%s %d", addr, int(limit)-open+1) // ReadDir's own descriptor is closed again
	}, func(string) string { return "ok" })
}

// When accept fails for want of descriptors, existing clients are still served, and a waiting
// client is served once a descriptor is free again.
func TestAcceptOutOfDescriptors(t *testing.T) {
	forEachDriver(t, func(t *testing.T, kind string) {
		c := startChild(t, "TestEMFILEChild", "LOOP_EMFILE_CHILD="+kind)
		var addr string
		var free int
		if _, err := fmt.Sscan(c.line, &addr, &free); err != nil || free < 1 {
			t.Fatalf("child said %q", c.line)
		}
		echoOnce := func(nc net.Conn, msg string, wait time.Duration) error {
			nc.SetDeadline(time.Now().Add(wait))
			if _, err := nc.Write([]byte(msg)); err != nil {
				return err
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(nc, got); err != nil {
				return err
			}
			if !bytes.Equal(got, []byte(msg)) {
				return fmt.Errorf("echo %q", got)
			}
			return nil
		}
		var served []net.Conn
		for i := range free {
			nc := dial(t, addr)
			defer nc.Close()
			if err := echoOnce(nc, fmt.Sprintf("client %d", i), 10*time.Second); err != nil {
				t.Fatalf("client %d of %d: %v", i, free, err)
			}
			served = append(served, nc)
		}
		// The server is out of descriptors: this client waits in the backlog.
		waiting := dial(t, addr)
		defer waiting.Close()
		if err := echoOnce(waiting, "waiting", 300*time.Millisecond); err == nil {
			t.Fatal("a client beyond the descriptor limit was served")
		}
		for i, nc := range served[1:] {
			if err := echoOnce(nc, "still here", 10*time.Second); err != nil {
				t.Fatalf("existing client %d: %v", i+1, err)
			}
		}
		served[0].Close()
		waiting.SetDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len("waiting"))
		if _, err := io.ReadFull(waiting, got); err != nil || string(got) != "waiting" {
			t.Fatalf("waiting client after a descriptor was freed: %q, %v", got, err)
		}
	})
}

func TestRSSChild(t *testing.T) {
	kind := os.Getenv("LOOP_RSS_CHILD")
	if kind == "" {
		t.Skip("helper process for TestIdleMemory")
	}
	if _, err := RaiseFileLimit(); err != nil {
		t.Fatal(err)
	}
	childServe(t, kind, func(addr string) string { return addr }, func(string) string {
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return fmt.Sprintf("%d %d %d %d", rssKB(t), ms.HeapInuse>>10, ms.StackInuse>>10, runtime.NumGoroutine())
	})
}

func rssKB(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// Memory per idle client for each driver (and for just holding a *net.TCPConn), measured in a
// server process of its own: LOOP_RSS_CONNS=10000 go test -run TestIdleMemory -v ./loop
func TestIdleMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("LOOP_RSS_CONNS"))
	if n == 0 {
		t.Skip("set LOOP_RSS_CONNS to measure")
	}
	if _, err := RaiseFileLimit(); err != nil {
		t.Fatal(err)
	}
	for _, kind := range append(append([]string(nil), driverKinds...), "tcpconn") {
		t.Run(kind, func(t *testing.T) {
			c := startChild(t, "TestRSSChild", "LOOP_RSS_CHILD="+kind)
			// RSS KiB, heap KiB, stack KiB, goroutines, connections held (tcpconn)
			var before, after [5]int
			stats := func(s *[5]int) { fmt.Sscan(c.ask(t, "stats"), &s[0], &s[1], &s[2], &s[3], &s[4]) }
			stats(&before)
			var ncs []net.Conn
			defer func() {
				for _, nc := range ncs {
					nc.Close()
				}
			}()
			for i := range n {
				nc, err := net.Dial("tcp", c.line)
				if err != nil {
					t.Fatalf("client %d: %v", i, err)
				}
				ncs = append(ncs, nc)
				if kind != "tcpconn" {
					// Each client talks once, so any buffer it used had the chance to stay.
					nc.SetDeadline(time.Now().Add(10 * time.Second))
					nc.Write([]byte("hello"))
					readN(t, nc, 5)
				}
			}
			if kind == "tcpconn" {
				waitFor(t, "accepts", func() bool { stats(&after); return after[4] == n })
			}
			stats(&after)
			per := func(i int) float64 { return float64(after[i]-before[i]) * 1024 / float64(n) }
			t.Logf("%s: %d idle connections: RSS %d→%d KiB = %.0f B/conn (heap %.0f B, stacks %.0f B), goroutines %d→%d",
				kind, n, before[0], after[0], per(0), per(1), per(2), before[3], after[3])
		})
	}
}
