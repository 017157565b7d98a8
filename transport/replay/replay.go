// Package replay remembers the authentication tags a bridge has accepted, so
// that a censor who records a genuine ClientHello and sends it again is
// refused instead of being shown that the bridge is a bridge.
//
// # Design
//
// A Filter is a pair of Bloom filters, the current generation and the
// previous one. Seen looks a tag up in both and sets its bits in the
// current one. Every ttl the generations rotate: the previous one is
// cleared and becomes the current one. A tag set in the generation that
// began at s was recorded before s+ttl and survives until the first rotation
// at or after s+2·ttl, so it is remembered for at least ttl and at most
// 2·ttl. A bridge accepts timestamps within ±max skew of its clock, so it
// passes ttl = 2·max skew: by the time a tag is forgotten, its timestamp is
// too old to be accepted anyway.
//
// Bloom filters rather than exact sets, because the three requirements
// cannot all be met by an exact set under a flood: memory fixed at
// construction, every tag recorded (Seen must record even when "full"), and
// no tag forgotten before ttl. An exact set that is full must either evict a
// tag younger than ttl (a false negative: a replay accepted) or refuse to
// record (the same tag would be accepted the next time). A Bloom filter
// always records, never forgets before its generation is dropped, and pays
// for a flood with false positives instead, which only make the bridge
// stricter.
//
// Sizing: each generation has 32 bits per expected entry and 22 hash
// functions. With maxEntries tags in a generation a fresh tag collides with
// probability (1-e^(-22/32))^22 ≈ 2.1e-7; a lookup checks two generations,
// so a genuine client is refused (and retries with a new tag) with
// probability below 4.3e-7 while the bridge records at most maxEntries tags
// per ttl. Memory is 2·32·maxEntries bits, 8 bytes per entry, allocated once
// in New and never grown.
//
// How many entries: a bridge cannot record tags faster than it completes
// TLS handshakes, so SizeFor sizes the filter for a handshake rate and
// MaxHandshakeRate is the rate the default filter is sized for: 10,000 a
// second. Measured on 2 cores of an AMD EPYC server with Go 1.26, the
// server's half of a Mirage handshake (TLS 1.3 with X25519MLKEM768 and an
// ECDSA P-256 certificate, plus the X25519 of the tag) costs about 230 µs
// of CPU: at most about 8,800 handshakes a second with both cores doing
// nothing else, before TCP, the face and the tunnel take their share. At
// 10,000 a second and the default ttl of 4 minutes a generation holds
// 2.4 million tags: 9.6 MB each, 19.2 MB for the filter.
//
// Flood: nothing is rotated early and nothing is evicted, since either would
// forget tags younger than ttl. Past maxEntries tags in a generation the
// false-positive rate rises: about 0.98 after 10·maxEntries. The filter fails
// closed — fresh genuine tags are refused, replays still are — until the
// flooded generation is dropped, at most 2·ttl after the flood stops. A
// filter sized by SizeFor for the bridge's real handshake rate cannot be
// flooded that far: more tags than that need more handshakes than the
// bridge can complete. Only tags that authenticated reach the filter, so
// any flood needs the bridge line; package ratelimit keeps one short id
// from taking more than its share.
//
// Hashing uses hash/maphash with seeds drawn at random per Filter, so a
// client cannot choose tags that pile onto the same bits.
package replay

import (
	"hash/maphash"
	"math"
	"math/bits"
	"sync"
	"time"
)

// Parameters of the Bloom filters, chosen for a false-positive rate below
// 1e-6 for a lookup in two generations at capacity (4.3e-7):
// k = bitsPerEntry·ln 2 ≈ 22 minimises it for 32 bits per entry. 29 bits
// and 20 hashes, the first choice, gave 1.8e-6.
const (
	numHashes    = 22
	bitsPerEntry = 32
)

// MaxHandshakeRate is the handshake rate, per second, that a filter from
// SizeFor(ttl, MaxHandshakeRate) is sized for: more than a bridge on two
// cores can complete (about 8,800 a second, see the package comment).
const MaxHandshakeRate = 10000

// SizeFor returns the maxEntries for New that keeps the false-positive rate
// below 1e-6 while at most perSecond tags are recorded a second: the tags
// one generation of length ttl can hold. For the default ttl of 4 minutes
// and MaxHandshakeRate it is 2,400,000 (19.2 MB). It panics if ttl or
// perSecond is not positive.
func SizeFor(ttl time.Duration, perSecond int) int {
	if ttl <= 0 || perSecond <= 0 {
		panic("replay: SizeFor needs a positive ttl and rate")
	}
	// Rounded up, so a ttl that is not a whole number of seconds still
	// gets room for every tag a generation can see.
	n := math.Ceil(ttl.Seconds() * float64(perSecond))
	if n > float64(math.MaxInt/bitsPerEntry-63) {
		panic("replay: SizeFor: ttl·rate too large to size")
	}
	return int(n)
}

// Filter remembers tags for at least ttl after they were last recorded (and,
// with a clock that does not go backwards, at most 2·ttl) in memory fixed at
// construction. It never reports a tag recorded less than ttl ago as new; it
// may report a new tag as seen (see the package comment for the rates).
//
// A Filter is safe for concurrent use by multiple goroutines: every Seen is
// atomic with respect to every other, so of many concurrent first calls for
// one tag exactly one returns false.
type Filter struct {
	ttl          time.Duration
	k            int
	seed1, seed2 maphash.Seed

	mu      sync.Mutex
	started bool      // false until the first Seen starts the first generation
	start   time.Time // when the current generation began
	cur     generation
	prev    generation
}

// generation is one Bloom filter. Its bits are allocated once; rotation
// swaps and clears generations instead of allocating new ones.
type generation struct {
	bits  []uint64
	added int // tags that were not already in it when recorded (for tests)
}

// New returns a Filter that remembers each tag for at least ttl, sized for up
// to maxEntries tags per ttl. It panics if ttl or maxEntries is not positive,
// or if maxEntries is too large to size, since those are programming errors.
func New(ttl time.Duration, maxEntries int) *Filter {
	return newFilter(ttl, maxEntries, numHashes, bitsPerEntry)
}

// newFilter lets tests build a smaller filter whose false-positive rate is
// high enough to measure.
func newFilter(ttl time.Duration, maxEntries, k, bitsPer int) *Filter {
	if ttl <= 0 {
		panic("replay: ttl must be positive")
	}
	if maxEntries <= 0 || maxEntries > math.MaxInt/bitsPer-63 {
		panic("replay: maxEntries out of range")
	}
	words := (maxEntries*bitsPer + 63) / 64
	return &Filter{
		ttl:   ttl,
		k:     k,
		seed1: maphash.MakeSeed(),
		seed2: maphash.MakeSeed(),
		cur:   generation{bits: make([]uint64, words)},
		prev:  generation{bits: make([]uint64, words)},
	}
}

// Seen reports whether tag was already recorded within ttl of now, and
// records it. The first call for a tag returns false, except for the rare
// false positive described in the package comment. A tag recorded between
// ttl and 2·ttl before now may still be reported; one recorded less than ttl
// before now always is.
//
// now is the caller's clock; Filter never reads the time itself. If now goes
// backwards, nothing is forgotten: generations only rotate when now passes
// the end of the current one, so a clock stepping back keeps tags longer,
// never shorter. Times carrying a monotonic reading (time.Now) are compared
// by it, as time.Time.Sub does.
//
// Any tag length is accepted; tags of different lengths are different tags.
func (f *Filter) Seen(tag []byte, now time.Time) bool {
	// Hash outside the lock: the seeds never change.
	h1 := maphash.Bytes(f.seed1, tag)
	h2 := maphash.Bytes(f.seed2, tag) | 1 // odd, so the k probes differ

	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate(now)
	inCur := f.cur.has(h1, h2, f.k)
	seen := inCur || f.prev.has(h1, h2, f.k)
	if !inCur {
		// Recording a tag found only in prev moves it forward, as the
		// contract "records it" says; it can only lengthen its memory.
		f.cur.add(h1, h2, f.k)
	}
	return seen
}

// Has reports whether tag was recorded within ttl of now, without recording
// it: what Seen would return, for a bridge that checks a tag when a hello
// arrives and records it only once the handshake has completed (so that
// hellos which never finish cannot fill the filter). The rates and the
// clock are as for Seen. Between a Has and the Seen that records, another
// connection may record the same tag; Seen then returns true, and the
// caller drops the connection that came second.
func (f *Filter) Has(tag []byte, now time.Time) bool {
	h1 := maphash.Bytes(f.seed1, tag)
	h2 := maphash.Bytes(f.seed2, tag) | 1

	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate(now)
	return f.cur.has(h1, h2, f.k) || f.prev.has(h1, h2, f.k)
}

// rotate starts new generations as now passes the end of the current one.
// f.mu must be held.
func (f *Filter) rotate(now time.Time) {
	if !f.started {
		f.started = true
		f.start = now
		return
	}
	// Negative when the clock went back: no rotation, nothing forgotten.
	if now.Sub(f.start) < f.ttl {
		return
	}
	next := f.start.Add(f.ttl)
	// Written as a second Sub rather than comparing with 2*ttl so that a
	// huge ttl cannot overflow.
	if now.Sub(next) < f.ttl {
		// One generation has passed. prev holds tags recorded before
		// f.start, now at least ttl old since now >= f.start+ttl, so it
		// can go. cur holds tags recorded before next; becoming prev, they
		// survive until now passes next+ttl, so each is kept at least ttl.
		f.prev, f.cur = f.cur, f.prev
		f.cur.reset()
		f.start = next // aligned, so a tag is also kept at most 2·ttl
		return
	}
	// Two or more generations have passed with no call: everything recorded
	// is at least ttl old.
	f.cur.reset()
	f.prev.reset()
	f.start = now
}

func (g *generation) reset() {
	clear(g.bits)
	g.added = 0
}

// probe returns the bit index of the i-th hash of a tag by double hashing
// (Kirsch and Mitzenmacher: two hashes give k that behave as independent
// ones for a Bloom filter), mapped onto [0, n) by a multiply instead of a
// modulo, which is faster and unbiased enough for 64-bit hashes.
func probe(h1, h2 uint64, i int, n uint64) uint64 {
	hi, _ := bits.Mul64(h1+uint64(i)*h2, n)
	return hi
}

func (g *generation) has(h1, h2 uint64, k int) bool {
	n := uint64(len(g.bits)) * 64
	for i := range k {
		b := probe(h1, h2, i, n)
		if g.bits[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

func (g *generation) add(h1, h2 uint64, k int) {
	n := uint64(len(g.bits)) * 64
	for i := range k {
		b := probe(h1, h2, i, n)
		g.bits[b/64] |= 1 << (b % 64)
	}
	g.added++
}
