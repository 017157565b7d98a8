// Package ratelimit limits how often each short id may authenticate, so
// that one link holder flooding valid hellos takes only its share of the
// bridge's handshakes and of its replay filter, and everyone else's
// handshakes are unaffected.
//
// # Design
//
// Each short id has a token bucket: it holds up to burst tokens, refills at
// rate tokens a second, and each allowed handshake takes one. The buckets
// live in a table of fixed capacity, allocated in New, ordered by last use.
// An id not in the table gets a full bucket; when the table is full, the
// bucket used longest ago makes room for it.
//
// Evicting a bucket can only hand its id a full bucket again later: it never
// refuses anyone. So a bridge that accepts only the short ids it issued
// (ServerConfig.ShortIDs) and a table at least that large limits every id
// exactly. A bridge that accepts any id cannot limit by id at all — a flood
// can use a new id for every hello — and relies on its replay filter being
// sized for its whole handshake rate (replay.SizeFor) instead.
package ratelimit

import (
	"sync"
	"time"
)

// Defaults for a bridge, per short id. A genuine client makes one
// authenticated connection per session and a new one when its network
// changes or the session idles out, so even a link shared by a household
// or a small group stays far below DefaultRate; DefaultBurst lets all of
// them reconnect at once after an outage. At 10 a second one id can use at
// most 0.1% of the 10,000 handshakes a second the replay filter is sized
// for (replay.MaxHandshakeRate).
const (
	DefaultRate   = 10   // handshakes a second, sustained
	DefaultBurst  = 60   // handshakes at once
	DefaultMaxIDs = 4096 // buckets kept: 48 bytes each plus the index, 270 KB in all
)

// Limiter is a token bucket per short id in memory fixed by New.
//
// A Limiter is safe for concurrent use by multiple goroutines.
type Limiter struct {
	rate  float64 // tokens a second
	burst float64

	mu    sync.Mutex
	index map[[8]byte]int32 // id → slot; never more than len(slots) entries
	slots []slot            // allocated once; the first used are in use
	used  int32
	// The slots in use form a list from the most recently used (head) to
	// the least (tail), linked by slot.prev and slot.next; -1 ends it.
	head, tail int32
}

// slot is one id's bucket and its place in the use order.
type slot struct {
	id         [8]byte
	tokens     float64
	last       time.Time // when tokens was last brought up to date
	prev, next int32
}

// New returns a Limiter that allows each id burst handshakes at once and
// perSecond a second after that, keeping buckets for up to maxIDs ids. It
// panics if an argument is not positive, since that is a programming error.
func New(perSecond float64, burst, maxIDs int) *Limiter {
	if !(perSecond > 0) || burst <= 0 || maxIDs <= 0 || maxIDs > 1<<30 {
		panic("ratelimit: New needs a positive rate, burst and maxIDs")
	}
	return &Limiter{
		rate:  perSecond,
		burst: float64(burst),
		index: make(map[[8]byte]int32, maxIDs),
		slots: make([]slot, maxIDs),
		head:  -1,
		tail:  -1,
	}
}

// Allow reports whether id may authenticate at now, and if so takes one of
// its tokens. now is the caller's clock; a clock that goes back adds no
// tokens and takes none away.
func (l *Limiter) Allow(id [8]byte, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.index[id]
	if !ok {
		i = l.claim(id)
		l.slots[i] = slot{id: id, tokens: l.burst, last: now, prev: -1, next: -1}
	} else {
		l.unlink(i)
	}
	l.pushFront(i)

	s := &l.slots[i]
	if dt := now.Sub(s.last); dt > 0 {
		s.tokens = min(l.burst, s.tokens+dt.Seconds()*l.rate)
		s.last = now
	}
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// claim returns a free slot for id, evicting the least recently used id
// when every slot is taken. l.mu must be held; the slot is not linked.
func (l *Limiter) claim(id [8]byte) int32 {
	var i int32
	if int(l.used) < len(l.slots) {
		i = l.used
		l.used++
	} else {
		i = l.tail
		l.unlink(i)
		delete(l.index, l.slots[i].id)
	}
	l.index[id] = i
	return i
}

func (l *Limiter) unlink(i int32) {
	s := &l.slots[i]
	if s.prev >= 0 {
		l.slots[s.prev].next = s.next
	} else {
		l.head = s.next
	}
	if s.next >= 0 {
		l.slots[s.next].prev = s.prev
	} else {
		l.tail = s.prev
	}
	s.prev, s.next = -1, -1
}

func (l *Limiter) pushFront(i int32) {
	s := &l.slots[i]
	s.prev, s.next = -1, l.head
	if l.head >= 0 {
		l.slots[l.head].prev = i
	}
	l.head = i
	if l.tail < 0 {
		l.tail = i
	}
}
