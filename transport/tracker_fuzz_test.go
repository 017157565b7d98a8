package transport

import (
	"encoding/binary"
	"slices"
	"testing"
)

// FuzzSmuxFrameTracker: the tracker of the frames smux is handed (which a
// bridge's counts and both ends' send windows follow, and which reads the
// peer's frames, aborts among them) never panics, sees exactly the headers
// and UPDs of a plain parse of the same bytes, however reads cut them, and
// is between frames exactly where the bytes end on a frame's end.
func FuzzSmuxFrameTracker(f *testing.F) {
	syn := []byte{smuxVersion, smuxCmdSYN, 0, 0, 3, 0, 0, 0}
	psh := []byte{smuxVersion, smuxCmdPSH, 4, 0, 3, 0, 0, 0, 'd', 'a', 't', 'a'}
	abort := []byte{smuxVersion, smuxCmdNOP, 0, 0, 3, 0, 0, 0x80}
	f.Add(slices.Concat(syn, psh, appendSmuxUPD(nil, smuxVersion, []byte{3, 0, 0, 0}, 4, 1<<20), abort), uint8(1))
	f.Add(slices.Concat(psh, psh[:5]), uint8(3))
	f.Add([]byte{smuxVersion, smuxCmdUPD, 4, 0, 1, 0, 0, 0, 1, 2, 3, 4}, uint8(7)) // an UPD of the wrong length
	f.Fuzz(func(t *testing.T, in []byte, cut uint8) {
		type event struct {
			upd       bool
			cmd       byte
			sid, a, b uint32
			n         int
		}
		var want []event
		rest, whole := in, true // whole: no frame's body runs past the input
		for len(rest) >= smuxHeaderLen {
			cmd, n := rest[1], int(binary.LittleEndian.Uint16(rest[2:4]))
			sid := binary.LittleEndian.Uint32(rest[4:8])
			want = append(want, event{cmd: cmd, sid: sid, n: n})
			body := rest[smuxHeaderLen:]
			if len(body) < n {
				whole = false
				break
			}
			if cmd == smuxCmdUPD && n == 8 {
				want = append(want, event{upd: true, sid: sid,
					a: binary.LittleEndian.Uint32(body[:4]), b: binary.LittleEndian.Uint32(body[4:8])})
			}
			rest = body[n:]
		}
		between := whole && len(rest) == 0
		var got []event
		tr := smuxFrameTracker{
			onHeader: func(cmd byte, sid uint32, n int) { got = append(got, event{cmd: cmd, sid: sid, n: n}) },
			onUpdate: func(sid, consumed, window uint32) {
				got = append(got, event{upd: true, sid: sid, a: consumed, b: window})
			},
		}
		step := int(cut%61) + 1
		for b := in; len(b) > 0; {
			k := min(step, len(b))
			tr.track(b[:k])
			b = b[k:]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("reads of %d bytes: the tracker saw %v, a plain parse %v", step, got, want)
		}
		if tr.between() != between {
			t.Fatalf("reads of %d bytes: between frames %v, want %v", step, tr.between(), between)
		}
	})
}
