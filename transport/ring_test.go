package transport

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestRingKeepsOrder: whatever the pushes, drops and growth, the ring
// holds exactly the bytes pushed and not yet dropped, in order.
func TestRingKeepsOrder(t *testing.T) {
	var r ring
	var model []byte
	rng := rand.New(rand.NewPCG(1, 2))
	next := byte(0)
	for range 20000 {
		if rng.IntN(2) == 0 {
			p := make([]byte, rng.IntN(40000))
			for i := range p {
				p[i] = next
				next++
			}
			r.push(p)
			model = append(model, p...)
		} else if len(model) > 0 {
			k := rng.IntN(len(model) + 1)
			r.drop(k)
			model = model[k:]
		}
		if r.n != len(model) {
			t.Fatalf("ring holds %d bytes, want %d", r.n, len(model))
		}
		if len(model) > 0 {
			off := rng.IntN(len(model))
			n := rng.IntN(len(model) - off + 1)
			a, b := r.slice(off, n)
			if got := append(append([]byte(nil), a...), b...); !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("slice(%d, %d) differs from what was pushed", off, n)
			}
		}
	}
}

// TestRingPinnedRecord: a record framed in place (pinRecord) is its
// frames followed by the data it was asked for, and it stays exactly that
// until unpin, whatever the ring does meanwhile: pushes that wrap around
// to it, drops that acknowledge it, growth that moves the bytes. (The
// flusher writes it to a carrier without the session's lock.) After
// unpin, the ring holds the bytes pushed, in order, as if nothing had
// been written over them.
func TestRingPinnedRecord(t *testing.T) {
	var r ring
	var model []byte
	rng := rand.New(rand.NewPCG(3, 4))
	next := byte(0)
	var rec, want []byte
	pins, wrapsOrGrows := 0, 0
	for range 50000 {
		switch op := rng.IntN(8); {
		case op < 3:
			p := make([]byte, rng.IntN(30000))
			for i := range p {
				p[i] = next
				next++
			}
			before := len(r.buf)
			r.push(p)
			if rec != nil && (len(r.buf) != before || r.head+r.n > len(r.buf)) {
				wrapsOrGrows++
			}
			model = append(model, p...)
		case op < 5 && len(model) > 0:
			k := rng.IntN(len(model) + 1)
			r.drop(k)
			model = model[k:]
		case op == 5 && rec == nil && len(model) > 0:
			off := rng.IntN(len(model))
			n := 1 + rng.IntN(min(len(model)-off, maxFrameBody))
			prefix := make([]byte, frameHeaderLen+rng.IntN(maxPinPrefix-frameHeaderLen+1))
			for i := range prefix {
				prefix[i] = 0xee
			}
			if rec = r.pinRecord(off, n, prefix); rec != nil {
				pins++
				want = append(prefix, model[off:off+n]...)
			}
		case op == 6 && rec != nil:
			r.unpin()
			rec = nil
		case op == 7:
			r.release()
		}
		if rec != nil {
			if !bytes.Equal(rec, want) {
				t.Fatal("a pinned record changed while pinned")
			}
			continue
		}
		if r.n != len(model) {
			t.Fatalf("ring holds %d bytes, want %d", r.n, len(model))
		}
		if len(model) > 0 {
			a, b := r.slice(0, len(model))
			if got := append(append([]byte(nil), a...), b...); !bytes.Equal(got, model) {
				t.Fatal("the ring's bytes differ from what was pushed")
			}
		}
	}
	if pins < 1000 || wrapsOrGrows < 100 {
		t.Fatalf("only %d pins and %d pushes that wrapped or grew while pinned: the test tests too little", pins, wrapsOrGrows)
	}
}

// TestRingPinRefusesWhatIsNotContiguous: a record whose data wraps around
// the end of the buffer, or whose frames would start before the buffer
// does, is not framed in place (the caller copies it instead).
func TestRingPinRefusesWhatIsNotContiguous(t *testing.T) {
	var r ring
	r.push(make([]byte, 64<<10)) // fills the 64 KiB buffer
	prefix := []byte{frameData, 0, 100}
	if r.pinRecord(0, 100, prefix) != nil {
		t.Fatal("framed in place data at the buffer's start, with no room for its header")
	}
	if rec := r.pinRecord(3, 100, prefix); rec == nil || &rec[0] != &r.buf[0] {
		t.Fatal("did not frame in place data with room for its header")
	}
	if r.pinRecord(200, 100, prefix) != nil {
		t.Fatal("pinned a second record while one is pinned")
	}
	r.unpin()
	r.drop(60 << 10)
	r.push(make([]byte, 8<<10)) // wraps: the last 4 KiB at the start
	if r.pinRecord(2<<10, 4<<10, prefix) != nil {
		t.Fatal("framed in place data that wraps around the buffer's end")
	}
	if r.pinRecord(0, 2<<10, prefix) == nil {
		t.Fatal("did not frame in place data that ends at the buffer's end")
	}
	r.unpin()
}
