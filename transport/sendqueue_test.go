package transport

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSendQueueKeepsOrder: whatever the pushes, links and drops, the
// queue holds exactly the bytes pushed or linked and not yet dropped, in
// order, across its chunks; it holds no chunk it does not need; its
// chunks hold at least half of what they could, but for the first, the
// last, and one after each full chunk (so its memory stays within twice
// what it holds, and three chunks); and it keeps at most maxSpareChunks
// spares.
func TestSendQueueKeepsOrder(t *testing.T) {
	var q sendQueue
	var model []byte
	rng := rand.New(rand.NewPCG(1, 2))
	next := byte(0)
	for i := range 20000 {
		switch {
		case rng.IntN(3) == 0:
			// A chunk filled outside the queue, as fillStream's.
			c := chunkPool.Get().(*[sendChunk]byte)
			k := 1 + rng.IntN(sendChunk)
			if rng.IntN(2) == 0 {
				k = minLinked // the least that is linked: the worst case
			}
			for i := range k {
				c[i] = next
				next++
			}
			q.link(c, k)
			model = append(model, c[:k]...)
		case rng.IntN(2) == 0:
			p := make([]byte, rng.IntN(3*sendChunk))
			if rng.IntN(2) == 0 {
				p = p[:rng.IntN(64)] // a small frame of smux's own
			}
			for i := range p {
				p[i] = next
				next++
			}
			q.push(p)
			model = append(model, p...)
		case len(model) > 0:
			k := rng.IntN(len(model) + 1)
			if rng.IntN(8) == 0 {
				k = len(model) // empty it, now and then
			}
			q.drop(k)
			model = model[k:]
		}
		if i%1000 == 0 {
			q.release()
		}
		if q.n != len(model) {
			t.Fatalf("queue holds %d bytes, want %d", q.n, len(model))
		}
		held := 0
		for j, sg := range q.segs {
			held += sg.end - sg.start
			small := sg.end-sg.start < minLinked && j > 0 && j < len(q.segs)-1
			if sg.end <= sg.start || (small && q.segs[j-1].end != sendChunk) {
				t.Fatalf("segment %d of %d holds c[%d:%d]", j, len(q.segs), sg.start, sg.end)
			}
		}
		if len(q.segs)*sendChunk > 2*q.n+3*sendChunk {
			t.Fatalf("%d chunks hold %d bytes", len(q.segs), q.n)
		}
		if held != q.n || (q.n == 0 && q.segs != nil) {
			t.Fatalf("segments hold %d bytes (%d of them), queue says %d", held, len(q.segs), q.n)
		}
		if len(q.spare) > maxSpareChunks {
			t.Fatalf("%d spare chunks, want at most %d", len(q.spare), maxSpareChunks)
		}
		if len(model) > 0 {
			off := rng.IntN(len(model))
			n := rng.IntN(len(model) - off + 1)
			if got := q.appendRange([]byte("x"), off, n); !bytes.Equal(got[1:], model[off:off+n]) || got[0] != 'x' {
				t.Fatalf("appendRange(%d, %d) differs from what was pushed", off, n)
			}
		}
	}
}

// TestQueuedFramesSpanChunks: the DATA frames of queued bytes are cut
// every maxFrameBody bytes, wherever the chunks end, exactly as
// appendFrames cuts one buffer, so bulk data still fills whole TLS
// records.
func TestQueuedFramesSpanChunks(t *testing.T) {
	data := make([]byte, 3*sendChunk+777)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var q sendQueue
	q.push(data[:1000]) // the queue starts mid-chunk after this drop
	q.drop(1000)
	q.push(data)
	for _, c := range []struct{ off, n, pad int }{
		{0, len(data), 0}, {5, sendChunk, 40}, {sendChunk - 3, 2*maxFrameBody + 9, 0}, {len(data), 0, 7},
	} {
		got := appendQueuedFrames([]byte{9}, &q, c.off, c.n, c.pad)
		want := appendFrames([]byte{9}, data[c.off:c.off+c.n], c.pad)
		if !bytes.Equal(got, want) {
			t.Fatalf("frames of %d bytes from %d (pad %d) differ from appendFrames's", c.n, c.off, c.pad)
		}
	}
}

// TestSendQueueInsertKeepsOrder: bytes put in front of others (insert,
// insertLinked, as a young stream's frames go ahead of bulk bytes not yet
// sent) land exactly where asked, among pushes, links and drops; every
// chunk is freed exactly once, by the last of its segments to be dropped,
// so none is reused while a segment still holds it.
func TestSendQueueInsertKeepsOrder(t *testing.T) {
	var q sendQueue
	var model []byte
	rng := rand.New(rand.NewPCG(3, 4))
	next := byte(0)
	fill := func(p []byte) []byte {
		for i := range p {
			p[i] = next
			next++
		}
		return p
	}
	for i := range 20000 {
		off := 0
		if len(model) > 0 {
			off = rng.IntN(len(model) + 1)
		}
		switch op := rng.IntN(6); {
		case op == 0:
			c := chunkPool.Get().(*[sendChunk]byte)
			k := 1 + rng.IntN(sendChunk)
			fill(c[:k])
			model = slices.Insert(model, off, c[:k]...)
			q.insertLinked(off, c, k)
		case op == 1:
			p := fill(make([]byte, 1+rng.IntN(sendChunk+100)))
			if rng.IntN(2) == 0 {
				p = p[:1+rng.IntN(64)]
			}
			model = slices.Insert(model, off, p...)
			q.insert(off, p)
		case op == 2:
			c := chunkPool.Get().(*[sendChunk]byte)
			k := 1 + rng.IntN(sendChunk)
			fill(c[:k])
			q.link(c, k)
			model = append(model, c[:k]...)
		case op == 3:
			p := fill(make([]byte, rng.IntN(2*sendChunk)))
			q.push(p)
			model = append(model, p...)
		case len(model) > 0:
			k := rng.IntN(len(model) + 1)
			q.drop(k)
			model = model[k:]
		}
		if q.n != len(model) {
			t.Fatalf("op %d: queue holds %d bytes, want %d", i, q.n, len(model))
		}
		owners := map[*[sendChunk]byte]int{}
		held := 0
		for j, sg := range q.segs {
			held += sg.end - sg.start
			if sg.end <= sg.start {
				t.Fatalf("op %d: segment %d of %d holds c[%d:%d]", i, j, len(q.segs), sg.start, sg.end)
			}
			if _, ok := owners[sg.c]; !ok {
				owners[sg.c] = 0
			}
			if !sg.shared {
				owners[sg.c]++
				for _, later := range q.segs[j+1:] {
					if later.c == sg.c {
						t.Fatalf("op %d: segment %d frees its chunk, and a later segment holds it too", i, j)
					}
				}
			}
		}
		for c, n := range owners {
			if n != 1 {
				t.Fatalf("op %d: a chunk has %d segments that free it, want 1", i, n)
			}
			if slices.Contains(q.spare, c) {
				t.Fatalf("op %d: a chunk in use is among the spares", i)
			}
		}
		if q.prio != nil {
			if _, ok := owners[q.prio]; !ok {
				t.Fatalf("op %d: the priority chunk is held by no segment (freed, and still written to)", i)
			}
		}
		if held != q.n {
			t.Fatalf("op %d: segments hold %d bytes, queue says %d", i, held, q.n)
		}
		if len(model) > 0 {
			o := rng.IntN(len(model))
			n := rng.IntN(len(model) - o + 1)
			if got := q.appendRange(nil, o, n); !bytes.Equal(got, model[o:o+n]) {
				t.Fatalf("op %d: appendRange(%d, %d) differs from the model", i, o, n)
			}
		}
	}
}
