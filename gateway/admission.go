package gateway

import (
	"fmt"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/wire"
)

// Admission control, the gateway's side of it (the logic is in package admission).
//
// Each backend of a database alias (its primary, and each --replica) has one gate, shared by the
// pools of every user of that alias: the gate bounds how many request units run on the backend
// at once (the database's pool size), and its tenants are the users, so under contention the
// slots are shared between users by their --priority weights, whatever each one offers. A gate
// per (database, user) pool would have one tenant each, and a user flooding its own pool would
// still take the backend's CPU from everyone else; a gate per backend server would make several
// aliases of one server share one pool size, which no PgBouncer user expects.
//
// A unit takes a slot before it asks its pool for a connection and gives it back with the
// connection, so the gate owns --max-queue, --query-wait-timeout and --query-wait-notify; the
// pool's own wait is left for connections being opened. Units the gate refuses after login get
// an ErrorResponse and the client stays connected; a refused login is closed, as in PgBouncer.

// admissionState is the server's admission bookkeeping besides the gates, which live on each
// database.
type admissionState struct {
	rates *admission.RateLimits // --rate-limit; nil when none is set

	// Clients per database alias and per user (--max-db-client-connections,
	// --max-user-client-connections), as given in their startup packets.
	clientsMu     sync.Mutex
	clientsByDB   map[string]int
	clientsByUser map[string]int

	overMemory atomic.Bool   // --max-memory is exceeded: new work is shed
	memory     atomic.Uint64 // the last sample of the process's memory, in bytes

	rejected sync.Map // rejectKey → *atomic.Uint64
	wait     *prometheus.HistogramVec
	waitObs  sync.Map // waitKey → prometheus.Observer
}

// rejectKey counts one kind of refusal. user and database are "" where they do not apply.
type rejectKey struct{ reason, database, user string }

type waitKey struct {
	database string
	backend  int
	user     string
}

// Rejection reasons, as the metrics label them.
const (
	rejectQueueFull    = "queue_full"           // --max-queue
	rejectWaitTimeout  = "wait_timeout"         // --query-wait-timeout
	rejectRateLimit    = "rate_limit"           // --rate-limit
	rejectMemory       = "max_memory"           // --max-memory
	rejectClients      = "max_client_conn"      // --max-client-conn
	rejectDBClients    = "max_db_client_conn"   // --max-db-client-connections
	rejectUserClients  = "max_user_client_conn" // --max-user-client-connections
	rejectShuttingDown = "shutting_down"
)

func (s *Server) initAdmission() error {
	a := &s.adm
	a.clientsByDB = map[string]int{}
	a.clientsByUser = map[string]int{}
	a.wait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "asyncgate_admission_wait_seconds",
		Help:    "How long request units waited for a slot of their backend's gate, by pool (database, user) and priority class (the user's weight).",
		Buckets: []float64{0, .0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 30},
	}, []string{"database", "backend", "user", "priority"})
	if len(s.cfg.RateLimits) > 0 {
		rates := make(map[string]admission.Rate, len(s.cfg.RateLimits))
		for user, v := range s.cfg.RateLimits {
			r, err := admission.ParseRate(v)
			if err != nil {
				return fmt.Errorf("--rate-limit %s: %w", user, err)
			}
			rates[user] = r
		}
		a.rates = admission.NewRateLimits(rates, nil)
	}
	return nil
}

// newGates opens one gate per backend of db, before db is published.
func (s *Server) newGates(db *database) {
	size := s.poolSizeLocked(db)
	db.gates = make([]*admission.Gate, 1+len(db.replicas))
	for i := range db.gates {
		name := db.name
		if i > 0 {
			name = fmt.Sprintf("%s/replica%d", db.name, i)
		}
		cfg := admission.Config{
			Name:         name,
			Limit:        size,
			MaxQueue:     s.cfg.MaxQueue,
			WaitTimeout:  s.cfg.QueryWaitTimeout,
			Notify:       s.cfg.QueryWaitNotify,
			Weights:      func(user string) int { return s.priority(db.name, user) },
			Aging:        s.cfg.PriorityAging,
			Reserve:      s.cfg.ReservePoolSize,
			ReserveAfter: s.cfg.ReservePoolTimeout,
		}
		if s.cfg.AdaptiveLimit {
			// Min 1 would let one slow window throttle a healthy backend to a trickle; a
			// quarter of the pool is a concurrency any backend sized for the pool handles.
			cfg.Adaptive = &admission.AdaptiveConfig{Min: max(1, size/4), Max: size}
		}
		db.gates[i] = admission.NewGate(cfg)
	}
}

// priority is user's weight in db's gates: --priority DB/USER=N, else --priority USER=N, else 1.
func (s *Server) priority(db, user string) int {
	if w, ok := s.cfg.Priorities[db+"/"+user]; ok {
		return w
	}
	if w, ok := s.cfg.Priorities[user]; ok {
		return w
	}
	return 1
}

// reject counts a refusal.
func (s *Server) reject(reason, database, user string) {
	k := rejectKey{reason, database, user}
	v, ok := s.adm.rejected.Load(k)
	if !ok {
		v, _ = s.adm.rejected.LoadOrStore(k, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// Rejections returns the refusals so far by reason, summed over databases and users.
func (s *Server) Rejections() map[string]uint64 {
	out := map[string]uint64{}
	s.adm.rejected.Range(func(k, v any) bool {
		out[k.(rejectKey).reason] += v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// admitLogin counts a client against the per-database and per-user client limits, and refuses
// new clients while memory is over --max-memory. It returns the error to close the client with.
func (s *Server) admitLogin(database, user string) *wire.Error {
	if err := s.memoryError(); err != nil {
		s.reject(rejectMemory, database, user)
		return err
	}
	a := &s.adm
	a.clientsMu.Lock()
	defer a.clientsMu.Unlock()
	if n := s.cfg.MaxDBClientConn; n > 0 && a.clientsByDB[database] >= n {
		s.reject(rejectDBClients, database, user)
		return &wire.Error{Code: "53300", Message: fmt.Sprintf(
			"no more connections allowed to database %q: %d clients connected (--max-db-client-connections)", database, n)}
	}
	if n := s.cfg.MaxUserClientConn; n > 0 && a.clientsByUser[user] >= n {
		s.reject(rejectUserClients, database, user)
		return &wire.Error{Code: "53300", Message: fmt.Sprintf(
			"no more connections allowed for user %q: %d clients connected (--max-user-client-connections)", user, n)}
	}
	a.clientsByDB[database]++
	a.clientsByUser[user]++
	return nil
}

func (s *Server) leaveLogin(database, user string) {
	a := &s.adm
	a.clientsMu.Lock()
	defer a.clientsMu.Unlock()
	if a.clientsByDB[database]--; a.clientsByDB[database] <= 0 {
		delete(a.clientsByDB, database)
	}
	if a.clientsByUser[user]--; a.clientsByUser[user] <= 0 {
		delete(a.clientsByUser, user)
	}
}

// admitUnit is what a unit must pass before it queues at a gate: the memory guard and the
// user's rate limit.
func (s *Server) admitUnit(database, user string) error {
	if err := s.memoryError(); err != nil {
		s.reject(rejectMemory, database, user)
		return err
	}
	if err := s.adm.rates.Check(user); err != nil {
		s.reject(rejectRateLimit, database, user)
		return err
	}
	return nil
}

// RateLimited returns the units each user with a --rate-limit had refused, as its bucket counted.
func (s *Server) RateLimited() map[string]uint64 { return s.adm.rates.Rejected() }

func (s *Server) memoryError() *wire.Error {
	if s.cfg.MaxMemory <= 0 || !s.adm.overMemory.Load() {
		return nil
	}
	return &wire.Error{Code: "53200", Message: fmt.Sprintf(
		"gateway memory use %d MB is over its limit of %d MB (--max-memory): new work is refused until it falls",
		s.adm.memory.Load()>>20, s.cfg.MaxMemory>>20)}
}

// memoryGuard samples the process's memory while --max-memory is set. Sampling (every 50 ms)
// keeps the check on the hot path to one atomic load; the overshoot in between is what 50 ms
// of new work can allocate, which the output bounds keep small.
func (s *Server) memoryGuard() {
	defer s.watchers.Done()
	samples := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		metrics.Read(samples)
		used := samples[0].Value.Uint64() - samples[1].Value.Uint64() // what the OS still backs
		s.adm.memory.Store(used)
		over := used > uint64(s.cfg.MaxMemory)
		if over != s.adm.overMemory.Swap(over) {
			if over {
				s.log.Warn("memory over --max-memory: shedding new work", "used_mb", used>>20, "limit_mb", s.cfg.MaxMemory>>20)
			} else {
				s.log.Info("memory back under --max-memory", "used_mb", used>>20)
			}
		}
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// waitObserver is the wait-time histogram of one pool, cached so that a unit pays one map load.
func (s *Server) waitObserver(database string, backend int, user string) prometheus.Observer {
	k := waitKey{database, backend, user}
	if o, ok := s.adm.waitObs.Load(k); ok {
		return o.(prometheus.Observer)
	}
	o := s.adm.wait.WithLabelValues(database, strconv.Itoa(backend), user, strconv.Itoa(s.priority(database, user)))
	s.adm.waitObs.Store(k, o)
	return o
}

// rejectReason names a gate's refusal for the metrics.
func rejectReason(err error) string {
	code, _ := errorFields(err)
	switch code {
	case "53300":
		return rejectQueueFull
	case "57014":
		return rejectWaitTimeout
	}
	return rejectShuttingDown
}

var (
	descGateRunning = prometheus.NewDesc("asyncgate_admission_running",
		"Request units holding a slot of the backend's gate.", []string{"database", "backend"}, nil)
	descGateLimit = prometheus.NewDesc("asyncgate_admission_limit",
		"Slots of the backend's gate: the pool size, or where --adaptive-limit has moved it.", []string{"database", "backend"}, nil)
	descGateQueue = prometheus.NewDesc("asyncgate_admission_queue_depth",
		"Request units waiting at the backend's gate, by pool (database, user) and priority class (the user's weight).",
		[]string{"database", "backend", "user", "priority"}, nil)
	descGateOldest = prometheus.NewDesc("asyncgate_admission_oldest_wait_seconds",
		"How long the longest-waiting unit at the backend's gate has waited.", []string{"database", "backend"}, nil)
	descRejected = prometheus.NewDesc("asyncgate_admission_rejections_total",
		"Clients and request units refused, by reason: queue_full, wait_timeout, rate_limit, max_memory, max_client_conn, max_db_client_conn, max_user_client_conn.",
		[]string{"reason", "database", "user"}, nil)
	descMemory = prometheus.NewDesc("asyncgate_memory_bytes",
		"The process's memory as the --max-memory guard last sampled it (absent when --max-memory is off).", nil, nil)
)

// admissionCollector reads the gates at scrape time.
type admissionCollector struct{ s *Server }

func (c admissionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGateRunning, descGateLimit, descGateQueue, descGateOldest, descRejected, descMemory} {
		ch <- d
	}
	c.s.adm.wait.Describe(ch)
}

func (c admissionCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	for _, name := range s.databaseNames() {
		for i, g := range s.databases()[name].gates {
			st := g.Stats()
			b := strconv.Itoa(i)
			ch <- prometheus.MustNewConstMetric(descGateRunning, prometheus.GaugeValue, float64(st.Running), name, b)
			ch <- prometheus.MustNewConstMetric(descGateLimit, prometheus.GaugeValue, float64(st.Limit), name, b)
			ch <- prometheus.MustNewConstMetric(descGateOldest, prometheus.GaugeValue, st.OldestWait.Seconds(), name, b)
			for user, n := range st.WaitingBy {
				ch <- prometheus.MustNewConstMetric(descGateQueue, prometheus.GaugeValue, float64(n),
					name, b, user, strconv.Itoa(s.priority(name, user)))
			}
		}
	}
	s.adm.rejected.Range(func(k, v any) bool {
		key := k.(rejectKey)
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(v.(*atomic.Uint64).Load()),
			key.reason, key.database, key.user)
		return true
	})
	if s.cfg.MaxMemory > 0 {
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(s.adm.memory.Load()))
	}
	s.adm.wait.Collect(ch)
}

// Admission returns the state of the gate in front of a database alias's primary (backend 0) or
// its i-th replica, and false if there is no such backend.
func (s *Server) Admission(database string, backend int) (admission.GateStats, bool) {
	db, ok := s.databases()[database]
	if !ok || backend < 0 || backend >= len(db.gates) {
		return admission.GateStats{}, false
	}
	return db.gates[backend].Stats(), true
}
