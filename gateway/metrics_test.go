package gateway_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// scrape fetches /metrics and returns each sample, keyed by its name and labels as exposed.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// The gauges follow the clients and the pool: connected clients go up by N while N are
// connected and back down after, and the pool's connections show up with bounded labels.
func TestMetricsFollowClientsAndPools(t *testing.T) {
	g := startGateway(t, nil)
	hs := httptest.NewServer(g.srv.MetricsHandler())
	t.Cleanup(hs.Close)

	if code, _ := get(t, hs.URL+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d", code)
	}
	if code, _ := get(t, hs.URL+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d", code)
	}
	m := scrape(t, hs.URL)
	if m["asyncgate_clients_connected"] != 0 {
		t.Fatalf("clients before any connected: %v", m["asyncgate_clients_connected"])
	}
	for _, name := range []string{"go_goroutines", "process_open_fds", "asyncgate_clients_max", "asyncgate_clients_pinned", "asyncgate_listen_channels"} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	const n = 3
	var conns []*pgx.Conn
	for range n {
		c := g.connect(t)
		if _, err := c.Exec(ctxT(t), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	m = scrape(t, hs.URL)
	if got := m["asyncgate_clients_connected"]; got != n {
		t.Fatalf("clients while %d are connected: %v", n, got)
	}
	labels := `{backend="0",database="` + testDatabase + `",user="` + appUser + `"}`
	open := m["asyncgate_pool_connections_open"+labels]
	if open < 1 || open > defaultTestPoolSize {
		t.Fatalf("pool connections open after %d clients ran queries: %v", n, open)
	}
	if sum := m["asyncgate_pool_connections_idle"+labels] + m["asyncgate_pool_connections_active"+labels] +
		m["asyncgate_pool_connections_connecting"+labels]; sum != open {
		t.Fatalf("idle+active+connecting = %v, open = %v", sum, open)
	}
	if m["asyncgate_pool_clients_waiting"+labels] != 0 {
		t.Fatalf("clients waiting with a pool to spare: %v", m["asyncgate_pool_clients_waiting"+labels])
	}
	if v, ok := m["asyncgate_breaker_state"+labels]; !ok || v != 0 {
		t.Fatalf("breaker state of a healthy pool: %v (present %v), want 0", v, ok)
	}
	for k := range m {
		if strings.Contains(k, "127.0.0.1") || strings.Contains(k, "SELECT") {
			t.Fatalf("unbounded label in %s", k)
		}
	}

	for _, c := range conns {
		c.Close(ctxT(t))
	}
	eventually(t, "connected clients back to 0", func() bool {
		return scrape(t, hs.URL)["asyncgate_clients_connected"] == 0
	})
	eventually(t, "every pool connection idle again", func() bool {
		m := scrape(t, hs.URL)
		return m["asyncgate_pool_connections_open"+labels] >= 1 &&
			m["asyncgate_pool_connections_idle"+labels] == m["asyncgate_pool_connections_open"+labels]
	})

	g.srv.Shutdown()
	if code, _ := get(t, hs.URL+"/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz after Shutdown: %d", code)
	}
}
