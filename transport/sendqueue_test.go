package transport

import (
	"bytes"
	"math/rand/v2"
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
