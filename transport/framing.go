package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
)

// Inside TLS, smux's bytes travel in frames that can carry padding
// (PROTOCOL.md, "Framing"):
//
//	frame = type(1) | length(2, BE) | body
//	type 0x00 DATA: body is the next bytes of the smux stream
//	type 0x01 PAD:  body is ignored
//
// Why: a TLS handshake carried inside the tunnel (Tor's, or an app's
// HTTPS) has telltale message sizes, and without padding they show
// through as the sizes of the outer TLS records. Writes that carry the
// first bytes of a stream, or of the session, get a PAD frame of random
// length in the same TLS record; bulk data, and streams past their first
// bytes, go unpadded, so calls and downloads pay nothing.
const (
	frameData      = 0x00
	framePad       = 0x01
	frameHeaderLen = 3
	// maxFrameBody keeps a frame with its header inside one TLS record.
	maxFrameBody = 1<<14 - frameHeaderLen
	// padStreamBytes and padSessionBytes say how long a stream and the
	// session count as young, so that their writes are padded: long
	// enough to cover a TLS handshake (a few KiB each way).
	padStreamBytes  = 16 << 10
	padSessionBytes = 32 << 10
	maxPad          = 1024
	// maxTrackedStreams bounds the per-stream counters.
	maxTrackedStreams = 4096
)

// smux frame commands (github.com/xtaci/smux frame.go), read from the
// frames smux hands to batchConn.Write.
const (
	smuxHeaderLen = 8
	smuxCmdFIN    = 1
	smuxCmdPSH    = 2
)

// padPolicy decides which writes are padded. Not safe for concurrent use:
// batchConn calls it under its lock.
type padPolicy struct {
	sessionSent int
	streamSent  map[uint32]int
}

// young reports whether the smux frame f belongs to the start of the
// session or of its stream, and counts it.
func (p *padPolicy) young(f []byte) bool {
	if len(f) < smuxHeaderLen {
		return false
	}
	if p.streamSent == nil || len(p.streamSent) > maxTrackedStreams {
		p.streamSent = make(map[uint32]int)
	}
	sid := binary.LittleEndian.Uint32(f[4:8])
	n := len(f) - smuxHeaderLen
	young := p.sessionSent < padSessionBytes
	p.sessionSent += len(f)
	switch f[1] {
	case smuxCmdPSH:
		sent := p.streamSent[sid]
		young = young || sent < padStreamBytes
		p.streamSent[sid] = sent + n
	case smuxCmdFIN:
		delete(p.streamSent, sid)
	}
	return young
}

// appendFrames appends data as DATA frames, then a PAD frame of pad bytes
// when pad > 0.
func appendFrames(out, data []byte, pad int) []byte {
	for len(data) > 0 {
		n := min(len(data), maxFrameBody)
		out = append(out, frameData, byte(n>>8), byte(n))
		out = append(out, data[:n]...)
		data = data[n:]
	}
	if pad > 0 {
		out = append(out, framePad, byte(pad>>8), byte(pad))
		out = append(out, make([]byte, pad)...)
	}
	return out
}

// padLen draws the length of a PAD frame's body.
func padLen() int { return 1 + rand.IntN(maxPad) }

var errBadFrame = errors.New("transport: malformed frame from peer")

// frameReader reads the DATA bodies of a frame stream as one byte stream,
// skipping PAD frames. Not safe for concurrent use (smux reads from one
// goroutine).
type frameReader struct {
	r   io.Reader
	rem int // bytes left in the current DATA frame
	hdr [frameHeaderLen]byte
}

func (f *frameReader) Read(p []byte) (int, error) {
	for f.rem == 0 {
		if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
			return 0, err
		}
		n := int(binary.BigEndian.Uint16(f.hdr[1:]))
		switch f.hdr[0] {
		case frameData:
			f.rem = n
		case framePad:
			if _, err := io.CopyN(io.Discard, f.r, int64(n)); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF // a cut frame is no clean end
				}
				return 0, err
			}
		default:
			return 0, fmt.Errorf("%w: type %#x", errBadFrame, f.hdr[0])
		}
	}
	if len(p) > f.rem {
		p = p[:f.rem]
	}
	n, err := f.r.Read(p)
	f.rem -= n
	if err == io.EOF && f.rem > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
