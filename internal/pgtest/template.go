package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// initdb is the costliest step of a start on a small machine, so its output
// is cached: one pristine data directory per server binary, server user and
// password under <temp root>/pgtest.cache-<uid>, copied for each cluster. The
// copies share a system identifier, which nothing here relies on.
// PGTEST_NO_TEMPLATE=1 runs initdb for every cluster instead.

const completeMarker = "pgtest.complete"

// templateLocks serialises building one template within this process;
// concurrent processes may build the same one, and the first rename wins.
var templateLocks sync.Map

// initTemplate returns a template data directory for c, building it if
// needed.
func (c *Cluster) initTemplate(ctx context.Context) (string, error) {
	root := filepath.Join(tempRoot(), "pgtest.cache-"+strconv.Itoa(os.Geteuid()))
	key, err := c.templateKey()
	if err != nil {
		return "", err
	}
	final := filepath.Join(root, key)
	if templateReady(final) {
		return filepath.Join(final, "data"), nil
	}

	mu, _ := templateLocks.LoadOrStore(key, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if templateReady(final) {
		return filepath.Join(final, "data"), nil
	}

	// Traversable but not listable: the server user (postgres when we are
	// root) must reach its own 0700 directory inside.
	if err := os.MkdirAll(root, 0o711); err != nil {
		return "", err
	}
	if err := os.Chmod(root, 0o711); err != nil {
		return "", err
	}
	removeStaleStaging(root)
	staging, err := os.MkdirTemp(root, key+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(staging) // a no-op once renamed
	if err := chown(staging, c.cred); err != nil {
		return "", err
	}
	c.logf("pgtest: initdb template %s", final)
	if err := c.runInitdb(ctx, staging, filepath.Join(staging, "data")); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(staging, completeMarker), nil, 0o600); err != nil {
		return "", err
	}
	if err := os.Rename(staging, final); err != nil && !templateReady(final) {
		return "", err
	}
	return filepath.Join(final, "data"), nil
}

func templateReady(dir string) bool {
	_, err1 := os.Stat(filepath.Join(dir, completeMarker))
	_, err2 := os.Stat(filepath.Join(dir, "data", "PG_VERSION"))
	return err1 == nil && err2 == nil
}

// templateKey identifies what initdb's output depends on: the binaries
// (path, size and mtime of postgres, so upgrades are noticed), the server
// user and the password.
func (c *Cluster) templateKey() (string, error) {
	fi, err := os.Stat(filepath.Join(c.BinDir, "postgres"))
	if err != nil {
		return "", err
	}
	uid := os.Geteuid()
	if c.cred != nil {
		uid = int(c.cred.Uid)
	}
	h := sha256.New()
	fmt.Fprintf(h, "v1\x00%s\x00%d\x00%d\x00%d\x00%s",
		c.BinDir, fi.Size(), fi.ModTime().UnixNano(), uid, c.opts.Password)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// removeStaleStaging removes half-built templates of processes that died
// while building them.
func removeStaleStaging(root string) {
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if !strings.Contains(e.Name(), ".tmp-") {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// copyTree copies a data directory, keeping modes and giving everything to
// the server user.
func copyTree(src, dst string, cred *syscall.Credential) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("pgtest: template: unexpected file %s", path)
		}
		return chown(target, cred)
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// useTemplate reports whether c is copied from a cached template.
func (c *Cluster) useTemplate() bool {
	return !c.opts.noTemplate && os.Getenv("PGTEST_NO_TEMPLATE") != "1"
}
