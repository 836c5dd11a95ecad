package benchmarks

import (
	"testing"
	"time"
)

func TestPlanInterleavesTargets(t *testing.T) {
	perTarget := 10*time.Second + 2 // not divisible by 3: the leftover nanoseconds must not be lost
	slots := Plan(3, 3, perTarget)
	if len(slots) != 9 {
		t.Fatalf("%d slots, want 9", len(slots))
	}
	order := ""
	total := map[int]time.Duration{}
	for i, s := range slots {
		order += string(rune('A' + s.Target))
		if s.Round != i/3 {
			t.Errorf("slot %d in round %d, want %d", i, s.Round, i/3)
		}
		if d := s.Duration - perTarget/3; d < 0 || d > 1 {
			t.Errorf("slot %d lasts %v, want %v (+1ns at most)", i, s.Duration, perTarget/3)
		}
		total[s.Target] += s.Duration
	}
	if order != "ABCABCABC" {
		t.Errorf("order %s, want ABCABCABC", order)
	}
	for tgt, d := range total {
		if d != perTarget {
			t.Errorf("target %d runs %v in total, want %v", tgt, d, perTarget)
		}
	}
	// Within a round every target gets the same time, so per-round ratios are fair.
	for r := range 3 {
		if a, c := slots[r*3].Duration, slots[r*3+2].Duration; a != c {
			t.Errorf("round %d: A runs %v, C runs %v", r, a, c)
		}
	}
}

func TestPlanSingleRound(t *testing.T) {
	slots := Plan(2, 1, 5*time.Second)
	if len(slots) != 2 || slots[0].Target != 0 || slots[1].Target != 1 || slots[1].Duration != 5*time.Second {
		t.Errorf("slots = %+v", slots)
	}
}
