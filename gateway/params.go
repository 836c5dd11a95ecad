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
	return settingsFor(c, want)
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

// followSettings gives a backend the client's tracked parameters that it does not have yet, and
// takes back what the gateway set there for an earlier client and this one does not want: the
// server does not report those parameters, so nothing else would undo them.
func (s *session) followSettings(c *pool.Conn) string {
	return settingsFor(c, s.desired)
}

// settingsFor returns the commands that give c the settings in want and undo the ones the gateway
// set on it for another client.
func settingsFor(c *pool.Conn, want map[string]string) string {
	var reset strings.Builder
	for name := range c.Settings {
		if _, _, wanted := lookupIn(want, name); !wanted {
			fmt.Fprintf(&reset, "RESET %s;", quoteIdent(name))
			delete(c.Settings, name)
		}
	}
	return reset.String() + setCommands(c, want)
}

// lookupIn finds name in m without regard to case.
func lookupIn(m map[string]string, name string) (key, value string, ok bool) {
	if v, ok := m[name]; ok {
		return name, v, true
	}
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return k, v, true
		}
	}
	return "", "", false
}

// setCommands returns a query giving c the settings it lacks, and records them as set. It uses
// set_config, which takes a value as the startup packet and ParameterStatus carry it: `SET
// search_path = 'a, b'` would name one schema "a, b".
func setCommands(c *pool.Conn, want map[string]string) string {
	var b strings.Builder
	for name, value := range want {
		if _, have, ok := lookupSetting(c, name); ok && have == value {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("SELECT ")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "set_config(%s, %s, false)", quoteLiteral(name), quoteLiteral(value))
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
