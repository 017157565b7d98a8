package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
)

// Inside each carrier's TLS, after the openings, both directions are a
// sequence of frames (PROTOCOL.md, "Framing"):
//
//	frame = type(1) | length(2, BE) | body
//
// DATA carries the next bytes of the session's byte stream (smux); the
// others keep that stream whole across carriers. PAD hides sizes: a TLS
// handshake carried inside the tunnel (Tor's, or an app's HTTPS) has
// telltale message sizes, and without padding they would show through as
// the sizes of the outer TLS records. Writes that carry the first bytes of
// a stream, or of the session, get a PAD frame of random length in the
// same TLS record; bulk data goes unpadded.
const (
	frameData   = 0x00 // body: the next bytes of the session stream
	framePad    = 0x01 // body: ignored
	frameAck    = 0x02 // body: offset(8): every byte before it was received
	frameSeek   = 0x03 // body: offset(8): the next DATA on this carrier starts here
	framePing   = 0x04 // empty: answer with an ACK at once
	frameResend = 0x05 // body: offset(8): send again from here (a gap was seen)
	frameRetire = 0x06 // empty: the sender sends nothing more on this carrier
	frameDrop   = 0x07 // body: carrier number(4): that carrier is dead, resend what it lost
	frameClose  = 0x08 // empty: the session is over

	frameHeaderLen = 3
	// maxFrameBody keeps a frame with its header inside one TLS record;
	// a receiver refuses longer frames, so it needs no more buffer.
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

// controlBodyLen is the body length each control frame must have.
var controlBodyLen = map[byte]int{
	frameAck: 8, frameSeek: 8, framePing: 0, frameResend: 8,
	frameRetire: 0, frameDrop: 4, frameClose: 0,
}

// smux frame commands (github.com/xtaci/smux frame.go), read from the
// frames smux hands to the session.
const (
	smuxHeaderLen = 8
	smuxCmdSYN    = 0
	smuxCmdFIN    = 1
	smuxCmdPSH    = 2
	smuxCmdUPD    = 4
)

// padPolicy decides which writes are padded. Not safe for concurrent use:
// the session calls it under its lock.
type padPolicy struct {
	sessionSent int
	streamSent  map[uint32]int
}

// young reports whether the smux frame with header hdr and n bytes of
// data belongs to the start of the session or of its stream, and counts it.
func (p *padPolicy) young(hdr []byte, n int) bool {
	if len(hdr) < smuxHeaderLen {
		return false
	}
	if p.streamSent == nil || len(p.streamSent) > maxTrackedStreams {
		p.streamSent = make(map[uint32]int)
	}
	sid := binary.LittleEndian.Uint32(hdr[4:8])
	young := p.sessionSent < padSessionBytes
	p.sessionSent += smuxHeaderLen + n
	switch hdr[1] {
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

// appendControl appends a control frame with an 8-byte offset body.
func appendOffsetFrame(out []byte, typ byte, off uint64) []byte {
	out = append(out, typ, 0, 8)
	return binary.BigEndian.AppendUint64(out, off)
}

// appendEmptyFrame appends a control frame with no body.
func appendEmptyFrame(out []byte, typ byte) []byte { return append(out, typ, 0, 0) }

// appendDropFrame appends a DROP frame naming carrier seq.
func appendDropFrame(out []byte, seq uint32) []byte {
	out = append(out, frameDrop, 0, 4)
	return binary.BigEndian.AppendUint32(out, seq)
}

// padLen draws the length of a PAD frame's body.
func padLen() int { return 1 + rand.IntN(maxPad) }

var errBadFrame = errors.New("transport: malformed frame from peer")

// frameReader reads one carrier's frames. Not safe for concurrent use:
// each carrier has one reader goroutine.
type frameReader struct {
	r    io.Reader
	hdr  [frameHeaderLen]byte
	body [maxFrameBody]byte
}

// next reads the next frame other than PAD and returns its type and body.
// The body is valid until the next call. A frame cut short by the end of
// the stream is io.ErrUnexpectedEOF, not a clean end.
func (f *frameReader) next() (byte, []byte, error) {
	for {
		typ, n, err := f.header()
		if err != nil {
			return 0, nil, err
		}
		body, err := f.readBody(n)
		if err != nil {
			return 0, nil, err
		}
		if typ != framePad {
			return typ, body, nil
		}
	}
}

// header reads and checks the next frame's header, and returns its type
// and body length; the caller then reads the body (readBody, or straight
// into its own buffer with bodyInto).
func (f *frameReader) header() (byte, int, error) {
	if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
		return 0, 0, err
	}
	typ := f.hdr[0]
	n := int(binary.BigEndian.Uint16(f.hdr[1:]))
	switch want, ok := controlBodyLen[typ]; {
	case typ == frameData || typ == framePad:
		if n > maxFrameBody {
			return 0, 0, fmt.Errorf("%w: %d-byte frame", errBadFrame, n)
		}
	case !ok:
		return 0, 0, fmt.Errorf("%w: type %#x", errBadFrame, typ)
	case n != want:
		return 0, 0, fmt.Errorf("%w: type %#x with a %d-byte body", errBadFrame, typ, n)
	}
	return typ, n, nil
}

// readBody reads a body of n bytes into the reader's own buffer.
func (f *frameReader) readBody(n int) ([]byte, error) {
	body := f.body[:n]
	return body, f.bodyInto(body)
}

// bodyInto reads a body into dst, which is exactly its length.
func (f *frameReader) bodyInto(dst []byte) error {
	if _, err := io.ReadFull(f.r, dst); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}
