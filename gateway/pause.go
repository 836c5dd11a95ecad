package gateway

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// PAUSE, RESUME, KILL and RECONNECT of the admin console, as PgBouncer's: a paused database
// lends no backend connections; the request units that need one wait (their wait counts as queue
// wait) until RESUME. PAUSE answers once no backend connection of the database is lent any more:
// every transaction running when it was issued has ended, so its backends may be restarted or
// failed over. KILL closes the database's clients at once and pauses it; RECONNECT retires its
// backend connections as they come back.

// pauseState is a database's pause, guarded by Server.pauseMu.
type pauseState struct {
	paused bool
	parked []*session // waiting for RESUME
}

// adminTargets resolves the optional database argument of a console command: the one named, or
// every configured database.
func (s *Server) adminTargets(verb string, words []string) ([]string, *adminError) {
	switch len(words) {
	case 1:
		return s.databaseNames(), nil
	case 2:
		name := strings.Trim(words[1], `"`)
		if _, ok := s.databases()[name]; !ok {
			return nil, &adminError{Code: "3D000", Message: fmt.Sprintf("%s: no database %q (SHOW DATABASES lists them)", verb, name)}
		}
		return []string{name}, nil
	}
	return nil, &adminError{Code: "42601", Message: fmt.Sprintf("syntax error: want %s [database]", verb)}
}

// setPaused pauses or resumes the databases names; resuming lets their parked units go on.
func (s *Server) setPaused(names []string, paused bool) {
	var wake []*session
	s.pauseMu.Lock()
	for _, name := range names {
		db := s.databases()[name]
		db.pause.paused = paused
		db.paused.Store(paused)
		if !paused {
			wake = append(wake, db.pause.parked...)
			db.pause.parked = nil
		}
	}
	s.pauseMu.Unlock()
	if len(wake) > 0 {
		// Exec may wait for the sessions' loops; the console's own may be one of them.
		go func() {
			for _, sess := range wake {
				sess.io.Exec(sess.unpark)
			}
		}()
	}
}

// park holds the session's unit while its database is paused; it reports whether it did.
func (s *session) park() bool {
	if !s.db.paused.Load() {
		return false
	}
	srv, db := s.srv, s.db
	srv.pauseMu.Lock()
	defer srv.pauseMu.Unlock()
	if !db.pause.paused {
		return false
	}
	db.pause.parked = append(db.pause.parked, s)
	s.waiting = true
	s.withdraw = func() bool {
		srv.pauseMu.Lock()
		defer srv.pauseMu.Unlock()
		if i := slices.Index(db.pause.parked, s); i >= 0 {
			db.pause.parked = slices.Delete(db.pause.parked, i, i+1)
		}
		return true
	}
	return true
}

// unpark runs on the session's loop after RESUME.
func (s *session) unpark() {
	if s.state == stClosed || !s.waiting || s.be != nil {
		return
	}
	s.waiting, s.withdraw = false, nil
	s.acquire()
}

// lentOf counts the backend connections of the databases names that are lent to clients.
func (s *Server) lentOf(names []string) int {
	n := 0
	for _, e := range s.poolEntries() {
		if slices.Contains(names, e.key.database) {
			n += lent(e.stats)
		}
	}
	return n
}

// pauseCommand runs PAUSE for a console session: the answer waits until the databases' backends
// are all back; the console reads nothing more meanwhile.
func (s *session) pauseCommand(words []string) {
	srv := s.srv
	names, aerr := srv.adminTargets("PAUSE", words)
	if aerr != nil {
		s.io.Write(wire.AppendReadyForQuery(wire.AppendError(nil, "ERROR", aerr.Code, aerr.Message), 'I'))
		return
	}
	srv.setPaused(names, true)
	srv.log.Info("paused (admin console PAUSE)", "databases", names)
	s.io.PauseReads()
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for srv.lentOf(names) > 0 {
			select {
			case <-srv.ctx.Done():
				return
			case <-tick.C:
			}
		}
		s.io.Exec(func() {
			if s.state == stClosed {
				return
			}
			s.io.Write(wire.AppendReadyForQuery(appendComplete(nil, "PAUSE"), 'I'))
			s.io.ResumeReads()
		})
	}()
}

// killClients closes the clients of the databases names (not console clients). It returns at
// once: Exec may wait for a session's loop, and the console asking runs on one.
func (s *Server) killClients(names []string) {
	go s.killClientsNow(names)
}

func (s *Server) killClientsNow(names []string) {
	s.cancelMu.Lock()
	sessions := make([]*session, 0, len(s.cancels))
	for _, sess := range s.cancels {
		sessions = append(sessions, sess)
	}
	s.cancelMu.Unlock()
	for _, sess := range sessions {
		sess.io.Exec(func() {
			if sess.db != nil && sess.state != stAdmin && slices.Contains(names, sess.db.name) {
				sess.fatal("57P01", fmt.Sprintf("terminating connection: database %s was killed on the admin console (KILL); it stays paused until RESUME", sess.db.name))
			}
		})
	}
}

// reconnect retires the backend connections of the databases names.
func (s *Server) reconnect(names []string) {
	for _, e := range s.poolEntries() {
		if slices.Contains(names, e.key.database) {
			if p, ok := e.pool.(*pool.Pool); ok { // a MySQL pool has no RECONNECT yet
				p.Reconnect()
			}
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// parkedCount is how many of user's clients of database wait for RESUME.
func (s *Server) parkedCount(database, user string) int {
	db := s.databases()[database]
	if db == nil {
		return 0
	}
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	n := 0
	for _, sess := range db.pause.parked {
		if sess.user == user {
			n++
		}
	}
	return n
}
