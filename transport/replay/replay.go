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
// functions, in blocks of 4 KiB (a blocked Bloom filter): a third hash
// picks a tag's block, and all 22 of its bits fall in it. A lookup or a
// record then touches one page of each generation instead of 22. With bits
// spread over the whole generation, a fresh bridge paid a page fault for
// most of them at each of its first few hundred handshakes (about 0.2 ms
// of a handshake's CPU), and every page was in memory from then on; now a
// generation's memory is the blocks its tags used, and a rotation clears
// only those, so a bridge with few clients keeps little of the filter in
// memory. The blocks cost a little in false positives: a block's load
// varies (Poisson, mean 1024 tags at capacity), and with maxEntries tags
// in a generation a fresh tag collides with probability 2.3e-7, against
// (1-e^(-22/32))^22 ≈ 2.1e-7 for bits spread over the whole generation. A
// lookup checks two generations, so a genuine client is refused (and
// retries with a new tag) with probability below 4.7e-7 while the bridge
// records at most maxEntries tags per ttl. Memory is 2·32·maxEntries bits
// rounded up to whole blocks, 8 bytes per entry, allocated once in New and
// never grown.
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
// 1e-6 for a lookup in two generations at capacity (4.7e-7 in 4 KiB
// blocks): k = bitsPerEntry·ln 2 ≈ 22 minimises it for 32 bits per entry.
// 29 bits and 20 hashes, the first choice, gave 1.8e-6. Blocks of 512
// bits (a cache line) would cost 1.8e-5.
const (
	numHashes    = 22
	bitsPerEntry = 32
	blockWords   = 512 // 4 KiB: a page
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
	ttl                 time.Duration
	k                   int
	seed1, seed2, seed3 maphash.Seed // seed3 picks the block

	mu      sync.Mutex
	started bool      // false until the first Seen starts the first generation
	start   time.Time // when the current generation began
	cur     generation
	prev    generation
}

// generation is one blocked Bloom filter. Its bits are allocated once;
// rotation swaps and clears generations instead of allocating new ones.
type generation struct {
	bits    []uint64 // blocks·blockLen words
	blocks  uint64
	blockLn uint64   // words per block: blockWords, or fewer in a small filter
	used    []uint64 // one bit per block: set since the last reset
	added   int      // tags that were not already in it when recorded (for tests)
}

// newGeneration makes a generation of at least words words, in whole blocks.
func newGeneration(words int) generation {
	bl := min(words, blockWords)
	n := (words + bl - 1) / bl
	return generation{
		bits:    make([]uint64, n*bl),
		blocks:  uint64(n),
		blockLn: uint64(bl),
		used:    make([]uint64, (n+63)/64),
	}
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
		seed3: maphash.MakeSeed(),
		cur:   newGeneration(words),
		prev:  newGeneration(words),
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
	h1, h2, h3 := f.hashes(tag)

	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate(now)
	inCur := f.cur.has(h1, h2, h3, f.k)
	seen := inCur || f.prev.has(h1, h2, h3, f.k)
	if !inCur {
		// Recording a tag found only in prev moves it forward, as the
		// contract "records it" says; it can only lengthen its memory.
		f.cur.add(h1, h2, h3, f.k)
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
	h1, h2, h3 := f.hashes(tag)

	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate(now)
	return f.cur.has(h1, h2, h3, f.k) || f.prev.has(h1, h2, h3, f.k)
}

// hashes returns a tag's three hashes: h1 and h2 place its bits within
// its block, h3 picks the block. Hashed outside the lock: the seeds never
// change.
func (f *Filter) hashes(tag []byte) (h1, h2, h3 uint64) {
	h1 = maphash.Bytes(f.seed1, tag)
	h2 = maphash.Bytes(f.seed2, tag) | 1 // odd, so the k probes differ
	h3 = maphash.Bytes(f.seed3, tag)
	return h1, h2, h3
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

// reset clears the blocks in use, and only those: clearing the others
// would bring every page of the generation into memory.
func (g *generation) reset() {
	for w, word := range g.used {
		for word != 0 {
			b := uint64(w*64 + bits.TrailingZeros64(word))
			clear(g.bits[b*g.blockLn : (b+1)*g.blockLn])
			word &= word - 1
		}
	}
	clear(g.used)
	g.added = 0
}

// block returns the index of the block that hash h3 picks.
func (g *generation) block(h3 uint64) uint64 {
	b, _ := bits.Mul64(h3, g.blocks)
	return b
}

// probe returns the bit index in [0, n) of the i-th hash of a tag: double
// hashing (Kirsch and Mitzenmacher: two hashes give k that behave as
// independent ones for a Bloom filter), each sum passed through SplitMix64's
// finalizer, then mapped onto [0, n) by a multiply instead of a modulo. The
// mixing matters in a block: without it a probe is the top 15 bits of
// h1 + i·h2, so tags whose h1 and h2 nearly agree share all their bits, and
// a block of 2^15 bits has only about 2^30 distinct sets of probes for its
// thousand tags. TestSizedForBridgeRate measured 18 false positives in 2e6
// lookups so, where the fill predicts one.
func probe(h1, h2 uint64, i int, n uint64) uint64 {
	x := h1 + uint64(i)*h2
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	x ^= x >> 31
	hi, _ := bits.Mul64(x, n)
	return hi
}

func (g *generation) has(h1, h2, h3 uint64, k int) bool {
	blk := g.block(h3)
	if g.used[blk/64]&(1<<(blk%64)) == 0 {
		return false // nothing recorded there: not even its page is read
	}
	words := g.bits[blk*g.blockLn : (blk+1)*g.blockLn]
	n := g.blockLn * 64
	for i := range k {
		b := probe(h1, h2, i, n)
		if words[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

func (g *generation) add(h1, h2, h3 uint64, k int) {
	blk := g.block(h3)
	g.used[blk/64] |= 1 << (blk % 64)
	words := g.bits[blk*g.blockLn : (blk+1)*g.blockLn]
	n := g.blockLn * 64
	for i := range k {
		b := probe(h1, h2, i, n)
		words[b/64] |= 1 << (b % 64)
	}
	g.added++
}
