// Command asyncgate-dev is `make run`: a throwaway PostgreSQL primary and streaming replica with
// asyncgate in front of them, ready for psql, all torn down on Ctrl-C. With -backend it skips the
// clusters and fronts an existing server instead.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/asyncgate/asyncgate/internal/pgtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "asyncgate-dev:", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "bin/asyncgate", "the asyncgate binary")
	listen := flag.String("listen", "127.0.0.1:6432", "where asyncgate listens")
	backend := flag.String("backend", "", "front this postgres:// DSN instead of throwaway clusters")
	user := flag.String("user", "app", "client user written to the throwaway auth file")
	password := flag.String("password", "app", "its password")
	flag.Parse()

	dir, err := os.MkdirTemp("", "asyncgate-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	userlist := filepath.Join(dir, "userlist.txt")
	if err := os.WriteFile(userlist, fmt.Appendf(nil, "%q %q\n", *user, *password), 0o600); err != nil {
		return err
	}

	args := []string{"--listen", *listen, "--auth-file", userlist}
	if *backend != "" {
		args = append(args, "--database", "app="+*backend)
	} else {
		fmt.Println("starting a throwaway PostgreSQL primary and streaming replica…")
		primary, err := pgtest.StartWithReplicas(context.Background(), pgtest.Options{}, 1)
		if err != nil {
			return err
		}
		defer primary.Stop()
		replica := primary.Replicas()[0]
		fmt.Printf("primary %s, replica %s (superuser postgres, trust)\n", primary.Addr(), replica.Addr())
		args = append(args,
			"--database", "app="+primary.DSN("postgres", "postgres"),
			"--database", "app_replica="+replica.DSN("postgres", "postgres"))
	}
	args = append(args, flag.Args()...)

	gate := exec.Command(*bin, args...)
	gate.Stdout, gate.Stderr = os.Stdout, os.Stderr
	if err := gate.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", *bin, err)
	}
	host, port := splitHostPort(*listen)
	fmt.Printf("\nasyncgate is up. Connect with:\n\n  PGPASSWORD=%s psql \"host=%s port=%s user=%s dbname=app sslmode=disable\"\n", *password, host, port, *user)
	if *backend == "" {
		fmt.Printf("  (dbname=app_replica reaches the replica)\n")
	}
	fmt.Printf("\nCtrl-C stops asyncgate and removes the clusters.\n\n")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- gate.Wait() }()
	select {
	case <-sigs:
		gate.Process.Signal(syscall.SIGTERM)
		<-exited
		return nil
	case err := <-exited:
		return fmt.Errorf("asyncgate exited: %v", err)
	}
}

func splitHostPort(addr string) (string, string) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i], addr[i+1:]
		}
	}
	return addr, "5432"
}
