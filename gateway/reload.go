package gateway

import (
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/pool"
)

// Reloading the configuration (SIGHUP, the admin console's RELOAD and SET). What can change
// without dropping a client is applied; the rest is reported as needing a restart:
//
//   - pool sizes (--default-pool-size, --min-pool-size, pool_size in a DSN): every pool resizes;
//     a smaller one closes the connections beyond its size as they come back;
//   - limits and timeouts: --max-client-conn, --query-timeout, --client-idle-timeout,
//     --idle-transaction-timeout, --client-login-timeout, for sessions old and new, from their
//     next deadline on;
//   - users: --auth-file (reread whenever a reload runs), --admin-users, --stats-users;
//   - databases: new --database aliases are served at once; an existing alias may change its
//     pool_size; other changes to an alias, and removing one, would cut its clients off.

// reloadable names the Config fields a reload applies (Databases is handled on its own).
var reloadable = map[string]bool{
	"PoolSize": true, "MinPoolSize": true, "MaxClientConn": true, "QueryTimeout": true,
	"ClientIdleTimeout": true, "IdleTxTimeout": true, "ClientLoginTimeout": true,
	"AuthFile": true, "AdminUsers": true, "StatsUsers": true, "Databases": true,
	"Log": true, "Reload": true, "TracerProvider": true, // not settings
}

// conf is the configuration as last reloaded: read the reloadable fields from it, the others
// from s.cfg (they are the same there until a reload).
func (s *Server) conf() *Config { return s.live.Load() }

// ReloadResult says what a reload did.
type ReloadResult struct {
	Applied  []string // "key: old → new"
	Rejected []string // "key: why"
}

// Reload applies next's reloadable settings and reports (and logs) what it applied and what it
// rejected, and why. Nothing is applied from a next that fails validation.
func (s *Server) Reload(next Config) ReloadResult {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var res ReloadResult
	cur := s.conf()
	if err := next.validate(); err != nil {
		res.Rejected = append(res.Rejected, "configuration: "+err.Error())
		s.logReload(res)
		return res
	}
	live := *cur
	cv, nv := reflect.ValueOf(cur).Elem(), reflect.ValueOf(&next).Elem()
	for i := range cv.NumField() {
		f := cv.Type().Field(i)
		a, b := cv.Field(i).Interface(), nv.Field(i).Interface()
		if f.Name == "Log" || f.Name == "Reload" || f.Name == "TracerProvider" || f.Name == "Databases" || reflect.DeepEqual(a, b) {
			continue
		}
		if !reloadable[f.Name] {
			res.Rejected = append(res.Rejected, fmt.Sprintf("%s: changing it needs a restart", f.Name))
			continue
		}
		reflect.ValueOf(&live).Elem().Field(i).Set(nv.Field(i))
		res.Applied = append(res.Applied, fmt.Sprintf("%s: %v → %v", f.Name, a, b))
	}
	live.Databases = maps.Clone(cur.Databases)
	s.reloadDatabases(&live, next, &res)
	s.live.Store(&live)
	if err := s.ReloadUsers(); err != nil {
		res.Rejected = append(res.Rejected, "AuthFile: "+err.Error())
	}
	s.resizePools()
	s.logReload(res)
	return res
}

func (s *Server) logReload(res ReloadResult) {
	for _, a := range res.Applied {
		s.log.Info("reload applied", "setting", a)
	}
	for _, r := range res.Rejected {
		s.log.Warn("reload rejected", "setting", r)
	}
	s.log.Info("reloaded", "applied", len(res.Applied), "rejected", len(res.Rejected))
}

// reloadDatabases adds next's new aliases and applies pool_size changes to existing ones.
func (s *Server) reloadDatabases(live *Config, next Config, res *ReloadResult) {
	dbs := s.databases()
	grown := maps.Clone(dbs)
	for _, name := range slices.Sorted(maps.Keys(next.Databases)) {
		dsn := next.Databases[name]
		old, ok := dbs[name]
		if !ok {
			db, err := parseDatabase(name, dsn)
			if err == nil {
				err = s.addReplicas(db, next.Replicas[name])
			}
			if err != nil {
				res.Rejected = append(res.Rejected, fmt.Sprintf("database %s: %v", name, err))
				continue
			}
			s.newGates(db)
			grown[name] = db
			live.Databases[name] = dsn
			res.Applied = append(res.Applied, "database "+name+": added")
			continue
		}
		prev := live.Databases[name]
		if dsn == prev {
			continue
		}
		if withoutPoolSize(dsn) != withoutPoolSize(prev) {
			res.Rejected = append(res.Rejected, fmt.Sprintf("database %s: changing its DSN would cut off its clients: restart, or add it under a new name", name))
			continue
		}
		db, err := parseDatabase(name, dsn)
		if err != nil {
			res.Rejected = append(res.Rejected, fmt.Sprintf("database %s: %v", name, err))
			continue
		}
		s.mu.Lock()
		was := old.poolSize
		old.poolSize = db.poolSize
		s.mu.Unlock()
		live.Databases[name] = dsn
		res.Applied = append(res.Applied, fmt.Sprintf("database %s: pool_size %d → %d", name, was, db.poolSize))
	}
	for name := range dbs {
		if _, ok := next.Databases[name]; !ok {
			res.Rejected = append(res.Rejected, fmt.Sprintf("database %s: removing it would cut off its clients: restart", name))
		}
	}
	if len(grown) != len(dbs) {
		s.dbs.Store(&grown)
	}
}

// withoutPoolSize is a DSN without its pool_size parameter, to tell a resize from other changes.
func withoutPoolSize(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn
	}
	q := u.Query()
	q.Del("pool_size")
	u.RawQuery = q.Encode()
	return u.String()
}

// resizePools gives every pool the size its database now has.
func (s *Server) resizePools() {
	c := s.conf()
	dbs := s.databases()
	for _, e := range s.poolEntries() {
		db := dbs[e.key.database]
		if db == nil {
			continue
		}
		size := s.poolSize(db)
		if p, ok := e.pool.(*pool.Pool); ok { // a MySQL pool keeps its size until a restart
			p.Resize(size+s.cfg.ReservePoolSize, min(c.MinPoolSize, size))
		}
	}
	// The admission gates let as many units run as the pools have connections.
	for _, db := range dbs {
		size := s.poolSize(db)
		for _, g := range db.gates {
			if s.cfg.AdaptiveLimit {
				g.SetAdaptive(&admission.AdaptiveConfig{Min: max(1, size/4), Max: size})
			} else {
				g.SetLimit(size)
			}
		}
	}
}

// settable are the keys the console's SET changes, under SHOW CONFIG's names, with how their
// value is read into a Config.
var settable = map[string]func(c *Config, v string) error{
	"default_pool_size":        intSetting(func(c *Config) *int { return &c.PoolSize }),
	"min_pool_size":            intSetting(func(c *Config) *int { return &c.MinPoolSize }),
	"max_client_conn":          intSetting(func(c *Config) *int { return &c.MaxClientConn }),
	"query_timeout":            durationSetting(func(c *Config) *time.Duration { return &c.QueryTimeout }),
	"client_idle_timeout":      durationSetting(func(c *Config) *time.Duration { return &c.ClientIdleTimeout }),
	"idle_transaction_timeout": durationSetting(func(c *Config) *time.Duration { return &c.IdleTxTimeout }),
	"client_login_timeout":     durationSetting(func(c *Config) *time.Duration { return &c.ClientLoginTimeout }),
}

func intSetting(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q: want a number", v)
		}
		*field(c) = n
		return nil
	}
}

// durationSetting reads a Go duration, or a number of seconds as PgBouncer's settings are given.
func durationSetting(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			*field(c) = time.Duration(n * float64(time.Second))
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q: want seconds or a duration such as 30s", v)
		}
		*field(c) = d
		return nil
	}
}

// setCommand runs SET key = value (or key=value, or key TO value) on the console.
func (s *Server) setCommand(words []string) *adminError {
	expr := strings.Join(words[1:], " ")
	key, value, ok := strings.Cut(expr, "=")
	if !ok {
		key, value, ok = strings.Cut(expr, " TO ")
	}
	key = strings.ToLower(strings.TrimSpace(key))
	value = strings.Trim(strings.TrimSpace(value), `'"`)
	if !ok || key == "" || value == "" {
		return &adminError{Code: "42601", Message: "syntax error: want SET key = value"}
	}
	set, ok := settable[key]
	if !ok {
		if _, known := s.configByKey()[key]; known {
			return &adminError{Code: "55P02", Message: fmt.Sprintf("%s cannot be changed while running: change it in the config file and restart (SET changes %s)", key, strings.Join(slices.Sorted(maps.Keys(settable)), ", "))}
		}
		return &adminError{Code: "42704", Message: fmt.Sprintf("unrecognized configuration parameter %q (SHOW CONFIG lists them)", key)}
	}
	next := *s.conf()
	if err := set(&next, value); err != nil {
		return &adminError{Code: "22023", Message: fmt.Sprintf("SET %s: %v", key, err)}
	}
	res := s.Reload(next)
	if len(res.Rejected) > 0 {
		return &adminError{Code: "22023", Message: fmt.Sprintf("SET %s: %s", key, strings.Join(res.Rejected, "; "))}
	}
	return nil
}

// reloadCommand runs the console's RELOAD: the whole configuration when the caller gave a way to
// reread it (Config.Reload), else the auth file. A configuration that does not parse is an
// error; changes that need a restart are a warning (a NoticeResponse), as what could be applied
// was.
func (s *Server) reloadCommand() (warning string, _ *adminError) {
	if s.cfg.Reload == nil {
		if err := s.ReloadUsers(); err != nil {
			return "", &adminError{Code: "58000", Message: err.Error()}
		}
		s.log.Info("reloaded --auth-file (admin console RELOAD)")
		return "", nil
	}
	next, err := s.cfg.Reload()
	if err != nil {
		s.log.Warn("reload rejected: the configuration does not parse", "err", err)
		return "", &adminError{Code: "58000", Message: "RELOAD: " + err.Error()}
	}
	res := s.Reload(next)
	if len(res.Rejected) > 0 {
		return "RELOAD applied " + strconv.Itoa(len(res.Applied)) + " changes; not applied: " + strings.Join(res.Rejected, "; "), nil
	}
	return "", nil
}
