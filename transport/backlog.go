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
// 16 KiB made an 8-stream download on loopback a fifth slower and a third
// dearer in CPU (wake-ups of the flusher), and even 512 KiB and 256 KiB
// cost it 8%. So the bounds follow the carrier's send rate, measured
// over rateInterval, from the floors up to 1 MiB each, the caps from
// 840 Mbit/s (the queue) and 1.7 Gbit/s (the socket). With caps of 4
// MiB and none (loopback, a LAN), a new stream on loopback waited 25 ms
// behind a download for its first byte; with 1 MiB and 1 MiB, 9 to 15
// ms, at the same speed and CPU per byte (the bench harness).
const (
	// unsentTime and lowatTime: how long the bytes waiting in the
	// session's queue, and in the carrier's socket, take to send.
	unsentTime = 10 * time.Millisecond
	lowatTime  = 5 * time.Millisecond
	// writeTime: how long one write of the flusher takes to send, from
	// minWriteChunk up to maxWriteChunk. Each write costs both ends a
	// round of wake-ups whatever its size: on loopback, writes of up to
	// 256 KiB instead of 64 KiB cost client and bridge together 4% less
	// CPU per GiB of one download, and 7% less of 8 (medians of 21
	// interleaved runs). A write goes to the socket whole, ahead of any
	// stream's later bytes, so on a slower path it stays small: below
	// 52 Mbit/s, the floor.
	writeTime = 2500 * time.Microsecond
	// The floors: what a slow path has waiting in front of a new
	// stream, besides the flusher's write (minWriteChunk). They keep a
	// carrier busy between two wake-ups of the flusher (each write takes
	// 26 ms at 5 Mbit/s), and let a write fill a TLS record. At 64 KiB
	// and 16 KiB (and writes of 64 KiB), a new stream at 5 Mbit/s waited
	// behind 230 ms of a download, where direct TCP's waited 8 ms
	// (TestSlowLinkNewStreamWaitsLittle).
	minUnsent = 16 << 10
	minLowat  = 8 << 10
	// startUnsent, startLowat and startWriteChunk are the bounds until
	// the rate is first measured (firstRateInterval of busy time: 12 KB
	// at 5 Mbit/s, 8 MB on loopback, which writes of one record each
	// made a system call a record).
	startUnsent     = 64 << 10
	startLowat      = 16 << 10
	startWriteChunk = 64 << 10
	// maxUnsentBound and maxLowat cap the session's queue bound and the
	// socket's. Half a MiB each cost uploads on loopback 4-7% more CPU
	// per GiB (the client, on one core, woke more often).
	maxUnsentBound = 1 << 20
	maxLowat       = 1 << 20
	rateInterval   = 100 * time.Millisecond
	// firstRateInterval is the busy time the first measure of a
	// session's rate takes: until then the bounds are the floors,
	// which cost a fast path a fifth of its speed. 100 ms of it was
	// all of a 64 MiB download on loopback (the bench harness's: one
	// stream down and up 9% and 15% slower than without bounds).
	firstRateInterval = 20 * time.Millisecond
)

// sendRate measures how fast a carrier sends while something waits to be
// sent: the rate at which it drains a backlog, which is the path's (or
// the machine's). Time when nothing waited does not count: a carrier
// that idled between two downloads would otherwise measure a trickle,
// and the next download would start at the floors (the bench harness's
// 64 MiB downloads on loopback did: a fifth slower). Guarded by the
// session's mu.
type sendRate struct {
	last      int64 // monoNow at the end of the previous write; 0: none yet
	lastBytes int64 // the carrier's bytes written then
	backlog   bool  // something waited to be sent then
	busy      int64 // time counted since the bounds were last set
	busyBytes int64 // bytes written in that time
	lowat     int   // the socket's bound now
}

// noteSent updates the bounds from c's send rate, once rateInterval of
// busy time has passed since the last update. The flusher calls it after
// each write, with mu held.
func (s *sessionConn) noteSent(c *carrier) {
	now, written := monoNow(), c.raw.written.Load()
	r := &c.rate
	if r.last != 0 && r.backlog {
		// The flusher went on at once after the previous write: this
		// write's time and bytes are the carrier draining a backlog.
		r.busy += now - r.last
		r.busyBytes += written - r.lastBytes
	}
	r.last, r.lastBytes = now, written
	r.backlog = s.next < s.written || s.unsentWaiters > 0
	need := rateInterval
	if !s.rateKnown {
		need = firstRateInterval
	}
	if r.busy < int64(need) {
		return
	}
	s.rateKnown = true
	bps := float64(r.busyBytes) / (float64(r.busy) / float64(time.Second))
	r.busy, r.busyBytes = 0, 0
	if s.fixedRate > 0 {
		bps = s.fixedRate
	}
	s.maxUnsent = min(max(int(bps*unsentTime.Seconds()), minUnsent), maxUnsentBound)
	s.writeChunk = min(max(int(bps*writeTime.Seconds()), minWriteChunk), maxWriteChunk)
	lowat := min(max(int(bps*lowatTime.Seconds()), minLowat), maxLowat)
	s.lowat = lowat
	// The socket's option is set again only on a change of a quarter or
	// more (a carrier's first bound, r.lowat 0, is always one).
	if lowat > r.lowat*5/4 || lowat < r.lowat*4/5 {
		r.lowat = lowat
		limitUnsent(c.raw, lowat)
	}
}
