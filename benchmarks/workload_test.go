package benchmarks

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltinWorkloads(t *testing.T) {
	for _, name := range BuiltinWorkloads {
		w, err := BuiltinWorkload(name, WorkloadOptions{SlowShare: 0.01, SlowMs: 20})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !w.UsesPgbenchTables() {
			t.Errorf("%s: UsesPgbenchTables = false", name)
		}
	}
	if _, err := BuiltinWorkload("nope", WorkloadOptions{}); err == nil {
		t.Error("unknown workload: want error")
	}
	w, _ := BuiltinWorkload("long-tail", WorkloadOptions{SlowShare: 0.25, SlowMs: 20})
	if sql := w.Scripts[1].Commands[1].SQL; !strings.Contains(sql, "pg_sleep(0.02)") {
		t.Errorf("slow script SQL %q lacks pg_sleep(0.02)", sql)
	}
}

// share returns how often pick chooses script 1.
func share(w *Workload) float64 {
	rng := rand.New(rand.NewPCG(5, 6))
	n := 0
	const total = 100000
	for range total {
		if w.pick(rng) == 1 {
			n++
		}
	}
	return float64(n) / total
}

func TestWorkloadMixes(t *testing.T) {
	rm, _ := BuiltinWorkload("read-mostly", WorkloadOptions{})
	if s := share(rm); s < 0.095 || s > 0.105 {
		t.Errorf("read-mostly: %.3f updates, want 0.10", s)
	}
	lt, _ := BuiltinWorkload("long-tail", WorkloadOptions{SlowShare: 0.01, SlowMs: 5})
	if s := share(lt); s < 0.008 || s > 0.012 {
		t.Errorf("long-tail: %.4f slow, want 0.01", s)
	}
	none, _ := BuiltinWorkload("long-tail", WorkloadOptions{SlowShare: 0})
	if len(none.Scripts) != 1 {
		t.Errorf("long-tail with share 0 has %d scripts, want 1", len(none.Scripts))
	}
}

func TestFileWorkload(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.sql")
	b := filepath.Join(dir, "b.sql")
	os.WriteFile(a, []byte("\\set id random(1, 10 * :scale)\nSELECT :id;\n"), 0o644)
	os.WriteFile(b, []byte("SELECT 1;\n\nSELECT :missing;\n"), 0o644)

	w, err := FileWorkload([]string{a + "@3", a})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Scripts) != 2 || w.Scripts[0].Weight != 3 || w.Scripts[1].Weight != 1 {
		t.Errorf("weights: %v, %v", w.Scripts[0].Weight, w.Scripts[1].Weight)
	}
	if w.UsesPgbenchTables() {
		t.Error("a file workload does not need the pgbench tables")
	}
	_, err = FileWorkload([]string{b})
	if err == nil || !strings.Contains(err.Error(), "b.sql:3: undefined variable :missing") {
		t.Errorf("err = %v, want the file and line of the bad variable", err)
	}
	if _, err := FileWorkload([]string{filepath.Join(dir, "none.sql")}); err == nil {
		t.Error("missing file: want error")
	}
}
