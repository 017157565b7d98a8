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
