// Package batcher pipelines independent request units from many clients onto one backend
// connection, routing responses back by order and guarding against units that change session or
// transaction state.
//
// A unit is an autocommit request: one simple Query, or one extended-protocol group ending in
// Sync. PostgreSQL runs each as its own implicit transaction and answers it with exactly one
// ReadyForQuery, so units of different clients can be written back to back onto one connection
// and the response stream cut at each ReadyForQuery. The caller (the gateway) decides which units
// are eligible; the batcher checks what it can see afterwards: a unit that leaves a transaction
// open or reports a ParameterStatus was misclassified, so its connection is closed before any
// later unit's result is delivered.
//
// Concurrency: one mutex per Batcher guards its queue and connections. Client callbacks run
// outside it, in response order for each unit, from the goroutine that read the backend (or the
// one that failed the unit), so a callback may submit the client's next unit.
package batcher
