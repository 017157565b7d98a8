package ratelimit

import (
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// t0 has no monotonic reading, so every comparison is deterministic.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func idOf(n uint64) [8]byte {
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], n)
	return id
}

// TestFloodingIDLimitedOthersUnaffected is the rate-limit half of the
// replay-poisoning fix (issue 11): one link holder sends 1,000 valid hellos
// a second for 10 s while 100 other users connect once a second each. The
// flooder gets its burst and its rate, nothing more; every other user gets
// every handshake.
func TestFloodingIDLimitedOthersUnaffected(t *testing.T) {
	const rate, burst = 10, 60
	l := New(rate, burst, 1024)
	flooder := idOf(0xbad)
	allowed := 0
	for ms := range 10_000 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		if l.Allow(flooder, now) {
			allowed++
		}
		if ms%1000 == 500 { // the others, once a second each
			for u := range uint64(100) {
				if !l.Allow(idOf(u), now) {
					t.Fatalf("user %d refused at %v while another id floods", u, now.Sub(t0))
				}
			}
		}
	}
	// burst at once, then rate a second over the 9.999 s that follow.
	if want := burst + rate*9; allowed < want || allowed > want+rate {
		t.Fatalf("flooding id allowed %d of 10000 handshakes, want %d..%d", allowed, want, want+rate)
	}
	t.Logf("flooding id: %d of 10000 handshakes in 10 s allowed", allowed)
}

func TestRefill(t *testing.T) {
	l := New(2, 3, 8)
	id := idOf(1)
	for i := range 3 {
		if !l.Allow(id, t0) {
			t.Fatalf("handshake %d of the burst refused", i)
		}
	}
	if l.Allow(id, t0) {
		t.Fatal("allowed past the burst")
	}
	if l.Allow(id, t0.Add(499*time.Millisecond)) {
		t.Fatal("allowed before a token refilled")
	}
	if !l.Allow(id, t0.Add(500*time.Millisecond)) {
		t.Fatal("refused after a token refilled")
	}
	// A long pause refills to the burst, not beyond.
	later := t0.Add(time.Hour)
	for i := range 3 {
		if !l.Allow(id, later) {
			t.Fatalf("handshake %d after a pause refused", i)
		}
	}
	if l.Allow(id, later) {
		t.Fatal("a pause refilled past the burst")
	}
}

func TestClockBackwards(t *testing.T) {
	l := New(1, 1, 8)
	id := idOf(1)
	if !l.Allow(id, t0) {
		t.Fatal("first refused")
	}
	// Going back neither refills nor breaks the bucket: the next token
	// comes one second after the latest time seen.
	for _, now := range []time.Time{t0.Add(-time.Hour), {}, t0} {
		if l.Allow(id, now) {
			t.Fatalf("allowed at %v after the clock went back", now)
		}
	}
	if !l.Allow(id, t0.Add(time.Second)) {
		t.Fatal("refused a second after the last token")
	}
}

// TestFixedMemory sends a million distinct ids through a table of 1024:
// the table never holds more, and steady churn allocates nothing, so no
// sequence of ids can grow the limiter.
func TestFixedMemory(t *testing.T) {
	const maxIDs = 1024
	l := New(DefaultRate, DefaultBurst, maxIDs)
	var n uint64
	next := func() {
		l.Allow(idOf(n), t0.Add(time.Duration(n)*time.Microsecond))
		n++
	}
	for range 4 * maxIDs { // fill, and evict a few rounds
		next()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if allocs := testing.AllocsPerRun(1_000_000, next); allocs != 0 {
		t.Errorf("Allow allocates %v times per call under churn", allocs)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if len(l.index) != maxIDs || l.used != maxIDs {
		t.Fatalf("table holds %d ids (%d slots used), want %d", len(l.index), l.used, maxIDs)
	}
	t.Logf("heap %d → %d bytes over %d distinct ids", before.HeapAlloc, after.HeapAlloc, n)
	// The last maxIDs ids are the ones kept: each still has its bucket
	// (one token taken), the one before them was evicted.
	for i := n - maxIDs; i < n; i++ {
		if _, ok := l.index[idOf(i)]; !ok {
			t.Fatalf("recent id %d evicted", i)
		}
	}
	if _, ok := l.index[idOf(n-maxIDs-1)]; ok {
		t.Fatal("the least recently used id was kept instead")
	}
}

// TestKnownIDsAllLimited: with a table as large as the set of ids the
// bridge issues, eviction never happens, so every id is limited exactly
// however the others behave.
func TestKnownIDsAllLimited(t *testing.T) {
	const ids, burst = 500, 5
	l := New(1, burst, ids)
	for round := range burst + 3 {
		for u := range uint64(ids) {
			got := l.Allow(idOf(u), t0)
			if want := round < burst; got != want {
				t.Fatalf("id %d, handshake %d: Allow = %v, want %v", u, round, got, want)
			}
		}
	}
}

func TestConcurrent(t *testing.T) {
	const goroutines, perG = 8, 5000
	l := New(1, 100, 64)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := range uint64(goroutines) {
		wg.Go(func() {
			for i := range uint64(perG) {
				// All goroutines share id 0 and churn others.
				if l.Allow(idOf(0), t0) {
					allowed.Add(1)
				}
				l.Allow(idOf(1+g*perG+i), t0)
			}
		})
	}
	wg.Wait()
	// id 0 was used at least every few calls, so it was never evicted:
	// exactly its burst was allowed.
	if allowed.Load() != 100 {
		t.Fatalf("shared id allowed %d times at one instant, want its burst of 100", allowed.Load())
	}
}

func TestNewPanicsOnBadArguments(t *testing.T) {
	for _, tc := range []struct {
		rate          float64
		burst, maxIDs int
	}{{0, 1, 1}, {-1, 1, 1}, {1, 0, 1}, {1, 1, 0}, {1, 1, -1}, {1, 1, 1 << 31}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%v, %d, %d) did not panic", tc.rate, tc.burst, tc.maxIDs)
				}
			}()
			New(tc.rate, tc.burst, tc.maxIDs)
		}()
	}
}

func BenchmarkAllow(b *testing.B) {
	l := New(DefaultRate, DefaultBurst, DefaultMaxIDs)
	var n uint64
	for b.Loop() {
		l.Allow(idOf(n%8192), t0.Add(time.Duration(n)*time.Microsecond))
		n++
	}
}
