// Package batcher will pipeline independent request units from many clients onto one backend
// connection, routing responses back by order and guarding against units that change session or
// transaction state.
package batcher
