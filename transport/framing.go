package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
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
// same TLS record. After that, a write whose last TLS record would be
// short (an interactive app's segment, a few Tor cells, an ACK) is padded
// so that record's length is drawn from a size bucket, not set by the
// write; bulk data goes in full records, unpadded.
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
	// frameStatus is the server's answer to a carrier's opening, its
	// first frame (PROTOCOL.md, "Openings"): status(1) | received(8) |
	// padding, so that its record can take the size the face's would.
	frameStatus = 0x09

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
	// maxTLSRecord is the most plaintext a TLS record holds (RFC 8446
	// §5.1). The client's utls fills records to it from the start, as
	// Chromium does; the bridge's crypto/tls, as the Go site it fronts,
	// once past a connection's first 14 or so records (dynamic record
	// sizing). So bulk writes go out in records of this size.
	maxTLSRecord = 1 << 14
	// minBucket is the smallest bucket edge of tail padding.
	minBucket = 32
	// maxTrackedStreams bounds the per-stream counters.
	maxTrackedStreams = 4096
	// h2PingLen and h2GoAwayLen are HTTP/2's PING frame (either way)
	// and a GOAWAY without debug data, which keepalives and idle closes
	// imitate.
	h2PingLen   = 9 + 8
	h2GoAwayLen = 9 + 8
	// statusBodyMin is a STATUS frame's body without padding.
	statusBodyMin = 1 + 8
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
	smuxCmdNOP    = 3
	smuxCmdUPD    = 4
)

// streamAbortFlag, set in the stream id of an smux NOP frame, makes the
// NOP an abort of the stream the other bits name, either way (PROTOCOL.md
// §7): smux takes any NOP for a keepalive. Streams never have it in their
// own ids (Session.openStream).
const streamAbortFlag uint32 = 1 << 31

// appendSmuxUPD appends an smux UPD frame of protocol version ver for the
// stream whose id (4 bytes, little-endian, as in a frame header) is sid:
// the bytes of the stream its receiver has read, and its window.
func appendSmuxUPD(b []byte, ver byte, sid []byte, consumed, window uint32) []byte {
	b = append(b, ver, smuxCmdUPD, 8, 0)
	b = append(b, sid[:4]...)
	b = binary.LittleEndian.AppendUint32(b, consumed)
	return binary.LittleEndian.AppendUint32(b, window)
}

// smuxFrameTracker follows the smux frames in the bytes handed to smux,
// to know when it is between two frames. Not safe for concurrent use.
type smuxFrameTracker struct {
	hdr  [smuxHeaderLen]byte
	hn   int // header bytes seen of the current frame
	body int // body bytes of the current frame still to come
	// onHeader, if set, is told each frame's command, stream and body
	// length once its header has been handed over (the bridge counts
	// what its streams hold: bridgebuf.go).
	onHeader func(cmd byte, sid uint32, n int)
	// onUpdate, if set, is told each UPD frame's stream, consumed count
	// and window once its body has been handed over (the direct send
	// path's windows: streamsend.go).
	onUpdate func(sid, consumed, window uint32)
	upd      [8]byte
	un       int // body bytes of the current frame kept in upd; -1: not a UPD
}

// track notes that smux was handed b.
func (t *smuxFrameTracker) track(b []byte) {
	for len(b) > 0 {
		if t.body > 0 {
			k := min(len(b), t.body)
			if t.un >= 0 {
				t.un += copy(t.upd[t.un:], b[:k])
			}
			t.body -= k
			b = b[k:]
			if t.body == 0 && t.un == len(t.upd) && t.onUpdate != nil {
				t.onUpdate(binary.LittleEndian.Uint32(t.hdr[4:8]),
					binary.LittleEndian.Uint32(t.upd[:4]), binary.LittleEndian.Uint32(t.upd[4:]))
			}
			continue
		}
		k := copy(t.hdr[t.hn:], b)
		t.hn += k
		b = b[k:]
		if t.hn == smuxHeaderLen {
			t.hn, t.body = 0, int(binary.LittleEndian.Uint16(t.hdr[2:4]))
			t.un = -1
			if t.hdr[1] == smuxCmdUPD && t.body == len(t.upd) {
				t.un = 0
			}
			if t.onHeader != nil {
				t.onHeader(t.hdr[1], binary.LittleEndian.Uint32(t.hdr[4:8]), t.body)
			}
		}
	}
}

// between reports whether the bytes handed to smux end between frames.
func (t *smuxFrameTracker) between() bool { return t.hn == 0 && t.body == 0 }

// padPolicy decides which writes are padded. Not safe for concurrent use:
// the session calls it under its lock.
type padPolicy struct {
	sessionSent int
	streamSent  map[uint32]int
	// youngOnly pads young writes only, as before tail padding (the
	// benchmarks' baseline): later writes go unpadded, whatever their
	// size, and bulk writes end where the queue or the chunk does.
	youngOnly bool
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

// appendQueuedFrames is appendFrames for the n bytes q holds from offset
// off: the frames run across the queue's chunks as they would across one
// buffer.
func appendQueuedFrames(out []byte, q *sendQueue, off, n, pad int) []byte {
	for n > 0 {
		m := min(n, maxFrameBody)
		out = append(out, frameData, byte(m>>8), byte(m))
		out = q.appendRange(out, off, m)
		off += m
		n -= m
	}
	if pad > 0 {
		out = append(out, framePad, byte(pad>>8), byte(pad))
		out = append(out, make([]byte, pad)...)
	}
	return out
}

// padFrame returns a PAD frame n bytes long, header included (n at least
// frameHeaderLen): a record of its own the size of someone else's.
func padFrame(n int) []byte {
	body := max(n-frameHeaderLen, 0)
	b := make([]byte, frameHeaderLen+body)
	b[0], b[1], b[2] = framePad, byte(body>>8), byte(body)
	return b
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

// bucketEdges are the edges of the record-size buckets of tail padding:
// from minBucket to a full record in quarter octaves (32·2^(k/4),
// rounded: 32, 38, 45, 54, 64, 76, … 11585, 13777, 16384). Quarter
// octaves cost about a fifth of a small write (PROTOCOL.md §6.2).
var bucketEdges = func() []int {
	var e []int
	for k := 0; ; k++ {
		n := int(math.Round(minBucket * math.Exp2(float64(k)/4)))
		e = append(e, n)
		if n >= maxTLSRecord {
			return e
		}
	}
}()

// bucketLen draws the length of a record that must hold at least m bytes
// (m at most maxTLSRecord): uniform over the bucket above the smallest
// edge not below m, (e_i, e_i+1], or a full record when that edge is the
// last. Every m up to the same edge gets the same distribution, so the
// length tells only which quarter octave m lies in.
func bucketLen(m int) int {
	i := sort.SearchInts(bucketEdges, m)
	if i+1 >= len(bucketEdges) {
		return maxTLSRecord
	}
	lo, hi := bucketEdges[i], bucketEdges[i+1]
	return lo + 1 + rand.IntN(hi-lo)
}

// tailPad returns the length, header included, of the PAD frame that
// ends a write of n bytes of frames so that the write's last TLS record
// has a bucketLen length instead of one set by the write, or 0 if the
// write ends on a full record. The padding lands in that last record.
func tailPad(n int) int {
	r := n % maxTLSRecord
	switch {
	case r == 0:
		return 0
	case r > maxTLSRecord-frameHeaderLen:
		// No room for a PAD header: the PAD frame fills the record and
		// makes a record of its own, padded as a small one.
		return maxTLSRecord - r + bucketLen(frameHeaderLen)
	}
	return bucketLen(r+frameHeaderLen) - r
}

// appendPad appends PAD frames of n bytes in all, headers included (n is
// 0 or at least frameHeaderLen).
func appendPad(out []byte, n int) []byte {
	for n >= frameHeaderLen {
		body := min(n-frameHeaderLen, maxFrameBody)
		out = append(out, framePad, byte(body>>8), byte(body))
		out = append(out, make([]byte, body)...)
		n -= frameHeaderLen + body
	}
	return out
}

// framedLen returns how many bytes n bytes of data take as DATA frames.
func framedLen(n int) int {
	return n + frameHeaderLen*((n+maxFrameBody-1)/maxFrameBody)
}

// wholeRecords returns how much of n bytes of data to send after pre
// bytes of frames so that the write ends on a TLS record boundary, and
// the bytes of padding that then fill it up to that boundary (0, or an
// empty PAD frame's 3 when the last DATA frame would hold none). It
// returns n and -1 if the write would not fill one record.
func wholeRecords(pre, n int) (int, int) {
	end := (pre + framedLen(n)) / maxTLSRecord * maxTLSRecord
	f := end - pre // for DATA frames
	if f <= frameHeaderLen {
		return n, -1
	}
	frames := (f + maxTLSRecord - 1) / maxTLSRecord
	m := f - frameHeaderLen*frames
	return m, f - framedLen(m)
}

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
	case typ == frameData || typ == framePad || typ == frameStatus:
		if n > maxFrameBody || (typ == frameStatus && n < statusBodyMin) {
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
