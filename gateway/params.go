package gateway

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/asyncgate/asyncgate/pool"
)

// trackedParameters follow a client from backend to backend in transaction and statement modes
// (PgBouncer's list); --track-extra-parameters adds more.
var trackedParameters = []string{
	"client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
	"standard_conforming_strings", "application_name", "search_path",
}

// startupSettings turns the client's startup parameters into SET commands for those the
// backend does not already have, so the session starts as it would on a direct connection.
func (s *session) startupSettings(c *pool.Conn) string {
	want := make(map[string]string)
	for name, value := range s.startup {
		switch name {
		case "user", "database", "replication":
		case "options":
			for name, value := range parseOptions(value) {
				want[name] = value
			}
		default:
			want[name] = value
		}
	}
	return setCommands(c, want)
}

// trackedSettings is what the client expects of every backend, read off the one that served its
// login: the standard tracked parameters, the extra ones, and whatever it set at startup.
func (s *session) trackedSettings(c *pool.Conn) map[string]string {
	if s.mode == sessionMode {
		return nil
	}
	out := make(map[string]string)
	take := func(name string) {
		if key, value, ok := lookupSetting(c, name); ok {
			out[key] = value
		}
	}
	for _, name := range trackedParameters {
		take(name)
	}
	for _, name := range s.srv.cfg.TrackExtraParameters {
		take(name)
	}
	for name := range s.startup {
		take(name)
	}
	for name := range parseOptions(s.startup["options"]) {
		take(name)
	}
	return out
}

// followSettings gives a backend the client's tracked parameters that it does not have yet.
func (s *session) followSettings(c *pool.Conn) string {
	return setCommands(c, s.desired)
}

// setCommands returns SET commands for the settings c lacks, and records them as set.
func setCommands(c *pool.Conn, want map[string]string) string {
	var b strings.Builder
	for name, value := range want {
		if _, have, ok := lookupSetting(c, name); ok && have == value {
			continue
		}
		fmt.Fprintf(&b, "SET %s = %s;", quoteIdent(name), quoteLiteral(value))
		if _, reported := c.Params[name]; !reported {
			c.Settings[name] = value
		}
	}
	return b.String()
}

// lookupSetting finds a parameter as the server reports it, or as the gateway set it, matching
// the name without regard to case as PostgreSQL does.
func lookupSetting(c *pool.Conn, name string) (key, value string, ok bool) {
	if v, ok := c.Params[name]; ok {
		return name, v, true
	}
	if v, ok := c.Settings[name]; ok {
		return name, v, true
	}
	for k, v := range c.Params {
		if strings.EqualFold(k, name) {
			return k, v, true
		}
	}
	for k, v := range c.Settings {
		if strings.EqualFold(k, name) {
			return k, v, true
		}
	}
	return "", "", false
}

// settingsTable shares identical tracked-parameter maps between sessions: most clients of an
// application log in with the same settings, and an idle client should cost little more than
// its socket. Bounded, so that clients varying their settings cannot grow it without end.
type settingsTable struct {
	mu   sync.Mutex
	maps map[string]map[string]string
}

const maxSharedSettings = 1024

// intern returns a shared map equal to m (shared=true) or m itself when the table is full.
func (t *settingsTable) intern(m map[string]string) (out map[string]string, shared bool) {
	if m == nil {
		return nil, false
	}
	var key strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		key.WriteString(k)
		key.WriteByte(0)
		key.WriteString(m[k])
		key.WriteByte(0)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if got, ok := t.maps[key.String()]; ok {
		return got, true
	}
	if len(t.maps) >= maxSharedSettings {
		return m, false
	}
	if t.maps == nil {
		t.maps = make(map[string]map[string]string)
	}
	t.maps[key.String()] = m
	return m, true
}
