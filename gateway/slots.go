package gateway

// slot is one response the backend owes for a message the gateway sent it, or one the gateway
// owes the client itself. Backend responses are matched to slots in order, which is how the
// gateway can add its own messages to a client's stream (prepare a statement on a new backend,
// apply a setting) and answer some client messages itself, without the client noticing.
type slot struct {
	kind  byte   // the message it answers: 'P' 'B' 'C' 'D' 'E' (Execute) 'S' (Sync) 'Q' 'F'
	act   action // what to do with the response
	synth []byte // actSynthetic: the response, written when the slot reaches the head
	stmt  string // 'P': the backend statement it prepares, forgotten if the Parse fails
}

type action uint8

const (
	actForward   action = iota // the client's own message: its response goes to the client
	actSwallow                 // the gateway's message: its response stays here (a failed Parse is the client's business)
	actSynthetic               // the gateway answers for the backend
)

// done reports whether a backend message of type typ completes a slot of this kind.
func (s *slot) done(typ byte) bool {
	switch s.kind {
	case 'P':
		return typ == '1'
	case 'B':
		return typ == '2'
	case 'C':
		return typ == '3'
	case 'D':
		return typ == 'T' || typ == 'n'
	case 'E':
		return typ == 'C' || typ == 'I' || typ == 's'
	case 'S', 'Q', 'F':
		return typ == 'Z'
	}
	return false
}

// endsAtSync reports whether an error leaves the slot waiting for ReadyForQuery: simple queries,
// function calls and Sync get one after an error; extended messages are skipped until Sync.
func (s *slot) endsAtSync() bool { return s.kind == 'Q' || s.kind == 'S' || s.kind == 'F' }

// slotQueue is a FIFO of slots that reuses its backing array.
type slotQueue struct {
	items []slot
	head  int
}

func (q *slotQueue) empty() bool { return q.head == len(q.items) }

func (q *slotQueue) len() int { return len(q.items) - q.head }

func (q *slotQueue) push(s slot) {
	if q.head > 0 && q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	q.items = append(q.items, s)
}

func (q *slotQueue) peek() *slot {
	if q.empty() {
		return nil
	}
	return &q.items[q.head]
}

func (q *slotQueue) pop() slot {
	s := q.items[q.head]
	q.items[q.head] = slot{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return s
}

// syncs counts the ReadyForQuery messages still owed.
func (q *slotQueue) syncs() int {
	n := 0
	for i := q.head; i < len(q.items); i++ {
		if q.items[i].endsAtSync() && q.items[i].act != actSynthetic {
			n++
		}
	}
	return n
}
