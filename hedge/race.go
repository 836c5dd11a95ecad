package hedge

// A Race is one hedged request: the original attempt and, perhaps, a hedge of it, each sent to
// a different backend. The rules:
//
//  1. Start begins attempt 0, once. Hedge begins attempt 1, once, and only while the race is
//     open: nothing has won and it has not failed.
//  2. The first attempt to deliver a response frame wins, and the race is decided: every
//     other attempt still running becomes a loser, reported once, by the call that decided
//     it, for the gateway to cancel. From then on only the winner's frames are passed on;
//     anything a loser still sends is discarded. There is never a second winner, and a
//     winner never changes.
//  3. A connection-level failure (see Hedgeable) of an attempt before any byte of the answer
//     reached the client, with no other attempt running and the hedge not yet sent, asks for
//     the hedge at once: the read is still safe to send elsewhere, and there is nothing left
//     to wait for.
//  4. Otherwise a failed attempt just leaves the race to the others. When none is left running
//     and no hedge is coming, the race has failed, with the error of the last attempt to fail.
//  5. Once decided, the race is over for hedging: a failure of the winner is a failure of a
//     request already under way, for the gateway to handle as any other (the client may hold
//     part of the answer), and Failed ignores it, as it ignores losers, which were cancelled.
//  6. Abort ends an open race without a winner (hedge asked for but not sendable, client gone,
//     query timeout) and reports the attempts still running, to cancel.
//
// Calls that the rules do not allow change nothing and say so in their result, so a frame or
// an error that arrives late, twice, or for an attempt that was never started cannot corrupt
// the outcome.
//
// A Race belongs to one session and is used by one goroutine at a time, like the rest of the
// session's state. It does no I/O and starts no goroutines; timers and sockets are the
// gateway's. The zero Race is ready to Start; reset one with r = Race{} for the next request.
type Race struct {
	att      [MaxAttempts]attemptState
	started  int
	phase    phase
	hedgeDue bool   // Failed asked for the hedge and it has not been started
	code     string // SQLSTATE of the last failed attempt, or of Abort
	list     [MaxAttempts]int
}

// MaxAttempts is the original and one hedge. A second hedge would mostly add load: if two
// backends are both slow, the cause is rarely the backend.
const MaxAttempts = 2

type attemptState uint8

const (
	attemptIdle    attemptState = iota // not started
	attemptRunning                     // sent, nothing heard yet
	attemptFailed                      // failed before anything won
	attemptWon
	attemptLost // cancelled: another won, or Abort
)

type phase uint8

const (
	open phase = iota
	decided
	over // failed or aborted
)

// Start begins the original attempt and returns its number, 0; or -1 if already started.
func (r *Race) Start() int {
	if r.started > 0 {
		return -1
	}
	r.att[0] = attemptRunning
	r.started = 1
	return 0
}

// Hedge begins the hedge and returns its number, 1, if the race allows one now: the original
// is running or failed asking for it, nothing has won, and no hedge was sent before.
func (r *Race) Hedge() (attempt int, ok bool) {
	if r.phase != open || r.started != 1 {
		return -1, false
	}
	r.att[1] = attemptRunning
	r.started = 2
	r.hedgeDue = false
	return 1, true
}

// FirstFrame reports whether a frame from attempt a is to be passed on. The first attempt to
// deliver one wins; losers are the other attempts that were still running, now to be
// cancelled, listed only by this call (the slice is valid until the next call on r). Later
// calls return true for the winner, with no losers, and false for every other attempt, whose
// frames are to be discarded; so the gateway may call FirstFrame for every frame it receives.
func (r *Race) FirstFrame(a int) (won bool, losers []int) {
	if a < 0 || a >= MaxAttempts {
		return false, nil
	}
	if r.phase != open {
		return r.att[a] == attemptWon, nil
	}
	if r.att[a] != attemptRunning {
		return false, nil
	}
	r.att[a] = attemptWon
	r.phase = decided
	return true, r.cancelRunning()
}

// Failed records that attempt a failed with SQLSTATE code: its connection broke (08006) or the
// backend ended it (57P01, …). beforeAnyByte is the caller's word that nothing of this request
// has reached the client. hedgeNow asks the gateway to send the hedge at once, within the
// budget, or to Abort if it cannot. Failures of attempts that are not running (winners,
// losers, attempts already failed or never started) are ignored.
func (r *Race) Failed(a int, beforeAnyByte bool, code string) (hedgeNow bool) {
	if a < 0 || a >= MaxAttempts || r.att[a] != attemptRunning {
		return false
	}
	r.att[a] = attemptFailed
	r.code = code
	for _, s := range r.att {
		if s == attemptRunning {
			return false // the other attempt may still answer
		}
	}
	if r.started < MaxAttempts && beforeAnyByte && Hedgeable(code) {
		r.hedgeDue = true
		return true
	}
	r.phase = over
	return false
}

// Abort ends an open race without a winner: the request fails with code, or with the last
// attempt's error if code is "". It returns the attempts still running, to cancel (valid until
// the next call on r). A race already decided or over is left as it is, and nil returned.
func (r *Race) Abort(code string) (cancel []int) {
	if r.phase != open {
		return nil
	}
	r.phase = over
	r.hedgeDue = false
	if code != "" {
		r.code = code
	}
	return r.cancelRunning()
}

// cancelRunning marks every running attempt lost and lists them.
func (r *Race) cancelRunning() []int {
	n := 0
	for i, s := range r.att {
		if s == attemptRunning {
			r.att[i] = attemptLost
			r.list[n] = i
			n++
		}
	}
	return r.list[:n]
}

// Winner is the attempt that won, or -1.
func (r *Race) Winner() int {
	for i, s := range r.att {
		if s == attemptWon {
			return i
		}
	}
	return -1
}

// Failure reports whether the race has failed, and with which SQLSTATE: every attempt failed,
// or it was aborted.
func (r *Race) Failure() (code string, failed bool) {
	if r.phase != over {
		return "", false
	}
	return r.code, true
}

// HedgeDue reports whether Failed asked for a hedge that has been neither sent nor given up.
func (r *Race) HedgeDue() bool { return r.hedgeDue }

// Hedgeable reports whether a failure with SQLSTATE code is the backend's own, so that the same
// read may well succeed on another: connection exceptions (class 08), the server shutting
// down, crashed or starting up (57P01, 57P02, 57P03), or out of connections (53300). Errors in
// the query itself would only fail again elsewhere.
func Hedgeable(code string) bool {
	if len(code) == 5 && code[:2] == "08" {
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "53300":
		return true
	}
	return false
}
