package transport

import "sync"

// sendChunk is the unit of the send queue's memory.
const sendChunk = 64 << 10

// maxSpareChunks bounds the chunks a queue keeps for its next pushes once
// the peer acknowledged what they held (1 MiB).
const maxSpareChunks = 16

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
// of the largest the queue ever held was written a whole buffer ago. Not
// safe for concurrent use.
type sendQueue struct {
	chunks []*[sendChunk]byte
	head   int // offset of the first byte in chunks[0]
	n      int // bytes held
	spare  []*[sendChunk]byte
}

// push appends p.
func (q *sendQueue) push(p []byte) {
	for len(p) > 0 {
		end := q.head + q.n // offset of the tail across the chunks
		if end == len(q.chunks)*sendChunk {
			q.chunks = append(q.chunks, q.newChunk())
		}
		c := q.chunks[end/sendChunk]
		m := copy(c[end%sendChunk:], p)
		q.n += m
		p = p[m:]
	}
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
	q.head += k
	q.n -= k
	done := q.head / sendChunk
	if q.n == 0 {
		// Empty: every chunk is free, and the next push starts at the
		// beginning of a chunk.
		done, q.head = len(q.chunks), 0
	} else {
		q.head %= sendChunk
	}
	for i := range done {
		q.freeChunk(q.chunks[i])
		q.chunks[i] = nil
	}
	q.chunks = q.chunks[done:]
	if len(q.chunks) == 0 {
		q.chunks = nil
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
	pos := q.head + off
	for n > 0 {
		c := q.chunks[pos/sendChunk]
		i := pos % sendChunk
		m := min(n, sendChunk-i)
		out = append(out, c[i:i+m]...)
		pos += m
		n -= m
	}
	return out
}
