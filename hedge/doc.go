// Package hedge will send a read to a second replica when the first is slow, keep the first
// answer and cancel the loser, within a budget.
package hedge
