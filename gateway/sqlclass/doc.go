// Package sqlclass classifies SQL text with PostgreSQL's own parser
// (libpg_query, the PostgreSQL 17 grammar), for three gateway features:
//
//   - Pinning, for transaction pooling: Effects lists what a statement does to
//     session state that cannot follow the client to another backend (temporary
//     tables, session advisory locks, WITH HOLD cursors, SQL prepared
//     statements, SET, LISTEN, LOAD) and what undoes it (DROP, unlock, CLOSE,
//     DEALLOCATE, RESET, UNLISTEN, DISCARD). The package reports; the gateway
//     decides which effects it can replay and which pin.
//   - Read routing: Read says the text is provably read-only, so it may run on a
//     streaming replica; ReadOnlyBegin marks a BEGIN READ ONLY whose whole
//     transaction may.
//   - Batching: Batchable says the text cannot change session or transaction
//     state, so it may be pipelined with other clients' statements.
//
// The gateway calls Classify for every simple Query and every Parse message,
// so results are cached by exact text.
//
// Every choice leans the way that costs performance rather than correctness:
//
// Read is an allowlist. Only SELECT, VALUES, TABLE, SHOW and EXPLAIN (without
// ANALYZE) of those qualify, and only without row locks (FOR UPDATE/SHARE),
// SELECT INTO or data-modifying WITH, and only if every function called is a
// known read-only built-in (see AllowFunctions) and every operator is
// unqualified or in pg_catalog. What text cannot show stays invisible: a view
// or trigger that writes, a user function named like a built-in and found
// first on the search_path. A write that slips through fails on the replica
// ("cannot execute ... in a read-only transaction"); it never lands there.
//
// Batchable is an allowlist of statement types (DML, queries, SHOW, NOTIFY and
// DDL that runs inside a transaction block on non-temporary objects) with a
// denylist of functions known to change session state: set_config, every
// advisory lock function (a transaction-level lock must not be held by a unit
// shared between clients either), setseed, dblink's connections, and whatever
// DenyBatchFunctions adds. Other user functions count as Batchable, although
// one could change session state: no parser can see inside them, which is why
// batching is opt-in per database.
//
// Effects come from the whole statement tree, including subqueries, CTEs and
// definitions that only store an expression (CREATE VIEW, column defaults,
// PREPARE): an effect reported that does not happen pins a client longer than
// needed, one missed lets state leak to other clients. The one exception is
// EXPLAIN without ANALYZE, which only plans. Effects hidden in DO blocks,
// procedures, functions and statements run by EXECUTE are invisible.
// TempDrop is reported for every unqualified name in DROP TABLE, VIEW or
// SEQUENCE, since such a name finds a temporary relation first; the gateway
// knows which temporary names a client has.
//
// Text the parser rejects is ParseError. Text whose tree could be deep enough
// to overflow the parser's C stack is TooComplex and never reaches the parser
// (see depth.go); the guard assumes glibc's default 8 MB thread stacks, and
// smaller ones (musl's 128 KB) would need a lower bound. Neither kind is
// analyzed, so neither is Read or Batchable or reports Effects; a gateway
// should pin a client that sends TooComplex text, and a ParseError the server
// nonetheless accepts (newer syntax).
package sqlclass
