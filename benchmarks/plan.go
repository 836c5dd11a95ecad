package benchmarks

import "time"

// Slot is one target's turn in one round.
type Slot struct {
	Target   int // index into Config.Targets
	Round    int // 0-based
	Duration time.Duration
}

// Plan interleaves targets round by round (A B C A B C …) so that slow drift of the machine —
// thermal throttling, a neighbour's batch job — falls on every target alike. Each target gets
// perTarget in total, split into rounds slices that differ by at most a nanosecond.
func Plan(targets, rounds int, perTarget time.Duration) []Slot {
	slots := make([]Slot, 0, targets*rounds)
	base := perTarget / time.Duration(rounds)
	extra := int(perTarget % time.Duration(rounds)) // nanoseconds left over, one per early round
	for r := range rounds {
		d := base
		if r < extra {
			d++
		}
		for t := range targets {
			slots = append(slots, Slot{Target: t, Round: r, Duration: d})
		}
	}
	return slots
}
