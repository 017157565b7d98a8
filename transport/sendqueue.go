package transport

import (
	"slices"
	"sync"
)

// sendChunk is the unit of the send queue's memory.
const sendChunk = 64 << 10

// maxSpareChunks bounds the chunks a queue keeps for its next pushes once
// the peer acknowledged what they held (1 MiB).
const maxSpareChunks = 16

// minLinked is the least a filled chunk must hold to join the queue as
// it is (link); less is copied into the queue's tail instead. A chunk
// that pushes began when the last one was full may hold less; every
// other chunk but the first and the last holds at least half of what it
// could, so the queue's memory stays within twice what it holds (and
// three chunks).
const minLinked = sendChunk / 2

// chunkPool holds chunks no queue keeps: every session's queue draws from
// it, so that memory freed by one session's acknowledgements serves the
// next session that sends.
var chunkPool = sync.Pool{New: func() any { return new([sendChunk]byte) }}

// sendQueue holds the bytes a session sent and the peer has not
// acknowledged, in chunks of sendChunk bytes. Chunks, not one buffer that
// doubles: a queue that grows to a long path's bandwidth-delay product
// (8 MiB) never copies what it holds to grow, and it never holds a chunk
// it does not need. A chunk the peer acknowledged goes to the queue's
// spares, last in first out, so the next push writes to memory written
// one acknowledgement ago, which is still in the cache; a buffer the size
// of the largest the queue ever held was written a whole buffer ago.
//
// A chunk may be filled outside the queue, and then join it whole
// (link): a stream's bytes are read from a socket straight into a chunk
// (fillStream), so a segment may end before its chunk does. Not safe for
// concurrent use.
type sendQueue struct {
	segs  []segment
	n     int // bytes held
	spare []*[sendChunk]byte
	// at and atOff remember where appendRange last began: segs[at]
	// holds the bytes from offset atOff on. The flusher reads the queue
	// a frame at a time from further and further in, and without this
	// each frame walked every segment in front of it again (a long
	// path's queue holds a hundred or more).
	at, atOff int
	// prio is the chunk that bytes put in front of others (insert) are
	// copied to, from prioUsed on; nil when there is none.
	prio     *[sendChunk]byte
	prioUsed int
}

// segment is the part of a chunk that holds queued bytes: c[start:end].
// A chunk may hold several segments (a segment split by insert, or the
// priority chunk's): all but the last in the queue are shared, and only
// the last frees the chunk when it is dropped.
type segment struct {
	c          *[sendChunk]byte
	start, end int
	shared     bool
}

// push appends p, copying it into the last chunk's room and new chunks.
func (q *sendQueue) push(p []byte) {
	for len(p) > 0 {
		if len(q.segs) == 0 || q.segs[len(q.segs)-1].end == sendChunk {
			q.segs = append(q.segs, segment{c: q.newChunk()})
		}
		last := &q.segs[len(q.segs)-1]
		m := copy(last.c[last.end:], p)
		last.end += m
		q.n += m
		p = p[m:]
	}
}

// link appends the first n bytes of c, a chunk from chunkPool or
// newChunk, and takes c: whole if n is at least minLinked, else by
// copying them (and c goes to the spares).
func (q *sendQueue) link(c *[sendChunk]byte, n int) {
	if n < minLinked {
		q.push(c[:n])
		q.freeChunk(c)
		return
	}
	q.segs = append(q.segs, segment{c: c, end: n})
	q.n += n
}

// newChunk returns a spare chunk, the one freed last, or one from the pool.
func (q *sendQueue) newChunk() *[sendChunk]byte {
	if k := len(q.spare); k > 0 {
		c := q.spare[k-1]
		q.spare[k-1] = nil
		q.spare = q.spare[:k-1]
		return c
	}
	return chunkPool.Get().(*[sendChunk]byte)
}

// freeChunk keeps c as a spare, or returns it to the pool when the queue
// has enough spares.
func (q *sendQueue) freeChunk(c *[sendChunk]byte) {
	if len(q.spare) < maxSpareChunks {
		q.spare = append(q.spare, c)
		return
	}
	chunkPool.Put(c)
}

// drop removes the first k bytes (at most what the queue holds).
func (q *sendQueue) drop(k int) {
	q.n -= k
	done := 0
	for k > 0 {
		s := &q.segs[done]
		m := min(k, s.end-s.start)
		s.start += m
		k -= m
		if s.start == s.end {
			done++
		}
	}
	if q.n == 0 {
		// Empty: the last chunk is free too, and the next push starts
		// at the beginning of a chunk.
		done = len(q.segs)
	}
	for i := range done {
		if sg := q.segs[i]; !sg.shared {
			if sg.c == q.prio {
				q.prio = nil
			}
			q.freeChunk(sg.c)
		}
		q.segs[i] = segment{}
	}
	q.segs = q.segs[done:]
	if len(q.segs) == 0 {
		q.segs = nil
	}
	q.at, q.atOff = 0, 0
}

// insert puts p at offset off of the queue (at most what it holds), in
// front of the bytes from off on, by copying it to the priority chunk: a
// young stream's frame goes ahead of bulk bytes not yet sent (prio.go).
// At the end of the queue it is push.
func (q *sendQueue) insert(off int, p []byte) {
	if off >= q.n {
		q.push(p)
		return
	}
	i := q.splitAt(off)
	for len(p) > 0 {
		if q.prio == nil || q.prioUsed == sendChunk {
			q.prio, q.prioUsed = q.newChunk(), 0
		}
		m := copy(q.prio[q.prioUsed:], p)
		start := q.prioUsed
		q.prioUsed += m
		q.n += m
		p = p[m:]
		if i > 0 && q.segs[i-1].c == q.prio && q.segs[i-1].end == start {
			q.segs[i-1].end += m
			continue
		}
		q.segs = slices.Insert(q.segs, i, segment{c: q.prio, start: start, end: start + m})
		q.ownLast(q.prio)
		i++
	}
	q.at, q.atOff = 0, 0
}

// insertLinked is insert for the first n bytes of c, a chunk from
// chunkPool or newChunk, which it takes, as link does (and at the end of
// the queue it is link).
func (q *sendQueue) insertLinked(off int, c *[sendChunk]byte, n int) {
	if off >= q.n {
		q.link(c, n)
		return
	}
	if n < minLinked {
		q.insert(off, c[:n])
		q.freeChunk(c)
		return
	}
	i := q.splitAt(off)
	q.segs = slices.Insert(q.segs, i, segment{c: c, end: n})
	q.n += n
	q.at, q.atOff = 0, 0
}

// splitAt returns the index of the segment that begins at offset off of
// the queue (0 < off < what it holds), splitting the segment that holds
// off in two if off falls inside it.
func (q *sendQueue) splitAt(off int) int {
	for i, sg := range q.segs {
		if off == 0 {
			return i
		}
		held := sg.end - sg.start
		if off < held {
			front := segment{c: sg.c, start: sg.start, end: sg.start + off}
			q.segs[i].start += off
			q.segs = slices.Insert(q.segs, i, front)
			q.ownLast(sg.c)
			return i + 1
		}
		off -= held
	}
	return len(q.segs)
}

// ownLast makes c's last segment in the queue the one that frees it,
// and its others shared.
func (q *sendQueue) ownLast(c *[sendChunk]byte) {
	last := true
	for j := len(q.segs) - 1; j >= 0; j-- {
		if q.segs[j].c == c {
			q.segs[j].shared = !last
			last = false
		}
	}
}

// release returns the spare chunks to the pool, so that an idle session
// holds none.
func (q *sendQueue) release() {
	for i, c := range q.spare {
		chunkPool.Put(c)
		q.spare[i] = nil
	}
	q.spare = nil
}

// appendRange appends the n bytes held from offset off to out.
func (q *sendQueue) appendRange(out []byte, off, n int) []byte {
	i := 0
	if off >= q.atOff && q.at < len(q.segs) {
		i, off = q.at, off-q.atOff
	} else {
		q.at, q.atOff = 0, 0
	}
	for ; i < len(q.segs) && n > 0; i++ {
		s := q.segs[i]
		held := s.end - s.start
		if off >= held {
			off -= held
			q.at, q.atOff = i+1, q.atOff+held
			continue
		}
		m := min(n, held-off)
		out = append(out, s.c[s.start+off:s.start+off+m]...)
		off = 0
		n -= m
	}
	return out
}
