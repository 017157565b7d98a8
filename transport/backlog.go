package transport

import "time"

// Bounds on what waits to be sent. A session's streams share its
// carrier, and whatever waits in front of the carrier waits in one queue:
// a download fills it as far as its window allows (4 MiB and more), and
// every other stream's bytes wait behind. While one download ran over a
// 20 Mbit/s link, a new connection's first byte took 1.2 s through
// Mirage against 0.12 s for a TCP connection beside the download
// (BenchmarkLatencyUnderLoad). Two queues held those bytes: the session's
// own (bytes not yet handed to a carrier), and the carrier's socket
// (bytes handed to TCP and not yet sent); bounding either alone moved
// them to the other. Both are now bounded by time at the rate the
// carrier sends: past the bound, a stream's writer waits, so its bytes
// wait in it and not ahead of everyone else's. What a carrier has in
// flight is bounded by sendLimit, as before: only the bytes in front of
// it are bounded here.
//
// Fixed bounds small enough for a slow link cost a fast one: 64 KiB and
// 16 KiB made an 8-stream download on loopback 25% slower and 30% dearer
// in CPU (wake-ups of the flusher). So the bounds follow the carrier's
// send rate, measured over rateInterval, from the floors up.
const (
	// unsentTime and lowatTime: how long the bytes waiting in the
	// session's queue, and in the carrier's socket, take to send.
	unsentTime = 10 * time.Millisecond
	lowatTime  = 5 * time.Millisecond
	// The floors keep a carrier busy between two wake-ups of the
	// flusher, whose writes are up to 64 KiB.
	minUnsent = 64 << 10
	minLowat  = 16 << 10
	// maxUnsentBound caps the session's queue bound; sendLimit bounds
	// all of it anyway.
	maxUnsentBound = sendLimit / 2
	// maxLowat: past it, a socket's unsent bytes are not bounded at all
	// (a fast path: loopback, a LAN).
	maxLowat     = 1 << 20
	rateInterval = 100 * time.Millisecond
	// freeStart is how much of a stream is queued without waiting for
	// the bound: what a user waits for when they open something (a
	// reply, a request, a page's first bytes) goes ahead of the
	// download's bytes that wait in its writer. Each waited for room
	// in the queue once a bulk writer kept it full: two small writes
	// of a new stream took 50 ms more at 20 Mbit/s.
	freeStart = 64 << 10
)

// sendRate measures how fast a carrier sends, for the bounds above.
// Guarded by the session's mu.
type sendRate struct {
	since int64 // monoNow of the interval's start; 0: none yet
	base  int64 // the carrier's bytes written then
	lowat int   // the socket's bound now; 0: not set
}

// noteSent updates the bounds from c's send rate, once an interval has
// passed since the last update. The flusher calls it after each write,
// with mu held.
func (s *sessionConn) noteSent(c *carrier) {
	now, written := monoNow(), c.raw.written.Load()
	r := &c.rate
	if r.since == 0 {
		r.since, r.base = now, written
		return
	}
	elapsed := now - r.since
	if elapsed < int64(rateInterval) {
		return
	}
	bps := float64(written-r.base) / (float64(elapsed) / float64(time.Second))
	r.since, r.base = now, written
	s.maxUnsent = min(max(int(bps*unsentTime.Seconds()), minUnsent), maxUnsentBound)
	lowat := max(int(bps*lowatTime.Seconds()), minLowat)
	if lowat > maxLowat {
		lowat = 0 // no bound
	}
	if lowat != r.lowat && (lowat == 0 || r.lowat == 0 || lowat > r.lowat*5/4 || lowat < r.lowat*4/5) {
		r.lowat = lowat
		limitUnsent(c.raw, lowat)
	}
}
