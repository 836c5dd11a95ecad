package sqlclass

import "fmt"

// Class is what the gateway needs to know about one query string. A Class
// returned by Classify is shared between callers: treat it, and its Effects,
// as read-only.
type Class struct {
	// Statements is the number of statements in the text; 0 for an empty or
	// comment-only text, and for ParseError and TooComplex text.
	Statements int

	// ParseError reports that the parser rejected the text. A server of the
	// parser's major version (17) rejects it too, before running any of it;
	// a newer server may accept syntax the parser does not know, which the
	// gateway should treat like TooComplex. It is neither Read nor
	// Batchable, and has no Effects.
	ParseError bool

	// TooComplex reports text whose tree could be too deep for the parser to
	// handle safely (chains like 1+1+...+1 thousands of terms long); the
	// server may still run it. Nothing is known about it: it is neither Read
	// nor Batchable, and may have any effect.
	TooComplex bool

	// Read reports that every statement is provably read-only and so may run
	// on a streaming replica.
	Read bool

	// Batchable reports that no statement can change session or transaction
	// state, so the text may be pipelined with other clients' statements.
	Batchable bool

	// TxControl reports that some statement is BEGIN, START TRANSACTION,
	// COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO, PREPARE TRANSACTION,
	// COMMIT PREPARED or ROLLBACK PREPARED.
	TxControl bool

	// ReadOnlyBegin reports a BEGIN or START TRANSACTION whose options end up
	// READ ONLY, so the transaction it opens may run on a replica.
	ReadOnlyBegin bool

	// Effects are the session-state effects of the text, in statement order;
	// within a statement, the statement's own effect comes first, then those
	// of its function calls in the order they appear in the text.
	Effects []Effect
}

// Effect is one change to session state, most of which outlive the
// transaction they happen in. The gateway decides which of them pin a client
// to its backend.
type Effect struct {
	Kind EffectKind

	// Name is what the effect is about, as Postgres stores it: unquoted
	// identifiers folded to lower case, quoted ones kept. See EffectKind for
	// what it holds per kind. It is empty for an ALL kind, and for a name
	// the text does not determine (set_config($1, ...)).
	Name string

	// Value is a Set's value as text, or the constant keys of an advisory
	// lock call ("1" or "1, 2"). It is empty when it is not a constant.
	Value string

	// Local marks a Set or Reset that ends with the transaction (SET LOCAL,
	// SET TRANSACTION, set_config(..., true)): it pins nothing, and releases
	// nothing either, since the session value returns at commit.
	Local bool
}

func (e Effect) String() string {
	s := e.Kind.String()
	if e.Name != "" {
		s += " " + e.Name
	}
	if e.Value != "" {
		s += "=" + e.Value
	}
	if e.Local {
		s += " (local)"
	}
	return s
}

// EffectKind says what an Effect does.
type EffectKind uint8

const (
	_ EffectKind = iota

	// TempCreate creates a temporary object; Name is the relation. Name is
	// empty for a temporary function or type, which no DROP we report can
	// remove by name, so it lasts until DISCARD or the end of the session.
	TempCreate
	// TempDrop drops the table, view or sequence Name, which may be temporary.
	TempDrop

	// AdvisoryLock takes a session-level advisory lock; Name is the function
	// (shared and exclusive locks are counted apart), Value the keys.
	AdvisoryLock
	// AdvisoryUnlock releases one; Name and Value as for AdvisoryLock.
	AdvisoryUnlock
	// AdvisoryUnlockAll releases every session-level advisory lock.
	AdvisoryUnlockAll

	// HoldCursor declares the WITH HOLD cursor Name.
	HoldCursor
	// CursorClose closes the cursor Name.
	CursorClose
	// CursorCloseAll closes every cursor.
	CursorCloseAll

	// Prepare creates the SQL prepared statement Name.
	Prepare
	// Deallocate drops the SQL prepared statement Name.
	Deallocate
	// DeallocateAll drops every prepared statement.
	DeallocateAll

	// Set sets parameter Name (lower case) to Value.
	Set
	// Reset returns parameter Name to its default (RESET, SET ... TO DEFAULT,
	// set_config(name, NULL, ...)).
	Reset
	// ResetAll is RESET ALL, which leaves role and session_authorization
	// alone.
	ResetAll

	// Load loads the shared library Name.
	Load

	// Listen listens on channel Name.
	Listen
	// Unlisten stops listening on channel Name.
	Unlisten
	// UnlistenAll is UNLISTEN *.
	UnlistenAll

	// DiscardAll is DISCARD ALL.
	DiscardAll
	// DiscardTemp is DISCARD TEMP.
	DiscardTemp
	// DiscardPlans is DISCARD PLANS.
	DiscardPlans
	// DiscardSequences is DISCARD SEQUENCES.
	DiscardSequences
)

var effectKindNames = [...]string{
	TempCreate:        "TempCreate",
	TempDrop:          "TempDrop",
	AdvisoryLock:      "AdvisoryLock",
	AdvisoryUnlock:    "AdvisoryUnlock",
	AdvisoryUnlockAll: "AdvisoryUnlockAll",
	HoldCursor:        "HoldCursor",
	CursorClose:       "CursorClose",
	CursorCloseAll:    "CursorCloseAll",
	Prepare:           "Prepare",
	Deallocate:        "Deallocate",
	DeallocateAll:     "DeallocateAll",
	Set:               "Set",
	Reset:             "Reset",
	ResetAll:          "ResetAll",
	Load:              "Load",
	Listen:            "Listen",
	Unlisten:          "Unlisten",
	UnlistenAll:       "UnlistenAll",
	DiscardAll:        "DiscardAll",
	DiscardTemp:       "DiscardTemp",
	DiscardPlans:      "DiscardPlans",
	DiscardSequences:  "DiscardSequences",
}

func (k EffectKind) String() string {
	if int(k) < len(effectKindNames) && effectKindNames[k] != "" {
		return effectKindNames[k]
	}
	return fmt.Sprintf("EffectKind(%d)", k)
}
