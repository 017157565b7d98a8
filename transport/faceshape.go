package transport

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"time"

	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/mirage-pt/mirage/transport/auth"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// A tunnel's first records copy what its face sends a browser that opens
// the site's front page (PROTOCOL.md, "Openings"). Measured here with
// Chromium 156 (transport/testdata/h2-openings): after the TLS handshake,
// Go's HTTP/2 server sends its SETTINGS at once (a 56-byte record, 39
// bytes of plaintext), then, once the browser's preface and request are
// in, WINDOW_UPDATE (30), the SETTINGS ACK (26), and the response's
// HEADERS and DATA (103 and 45 for Go's 404 page). nginx sends its two
// session tickets at once (266 each) and then one record with SETTINGS,
// WINDOW_UPDATE, ACK and HEADERS (184) and one per DATA frame. A bridge
// whose tunnel answered with one record of its own size, and then nothing
// until a stream opened, was told apart by its first four records.
//
// So the bridge learns its face's records, and a tunnel's server side
// sends records of the same plaintext lengths, in the same two phases.
// The browser's side is Chromium's: its preface, SETTINGS and
// WINDOW_UPDATE (one 87-byte record), its request's HEADERS (a record
// that grows with the length of the host name), and a SETTINGS ACK (26)
// once the server's first record is in.

// openingShape is the plaintext lengths of the TLS records a face sends
// after its handshake flight, to a browser that opens its front page:
// session tickets sent late, SETTINGS, WINDOW_UPDATE, the ACK, the
// response. A tunnel's server side sends the first at once, with the
// proof; the second, with the status, once the client's opening is in;
// the rest as padding.
type openingShape []int

// goFaceShape is what Go's HTTP/2 server sends Chromium for a 404 (the
// site face without a page), as measured; the shape a bridge uses until
// it has learned its own.
var goFaceShape = openingShape{39, 13, 9, 86, 28}

// Bounds on a learned shape: the proof's record and the status's record
// must hold them, and a face with a large page costs a tunnel no more
// than this.
const (
	proofOpeningLen   = auth.ProofLen + 2 // proof | padding length
	statusFrameMin    = frameHeaderLen + statusBodyMin
	maxShapeRecords   = 12
	maxShapeBytes     = 64 << 10
	recordOverhead13  = 17 // TLS 1.3 AEAD record: content type byte and 16-byte tag
	shapeQuiet        = 150 * time.Millisecond
	shapeLearnTimeout = 15 * time.Second
)

// sane returns the shape bounded, with at least two records, the first
// large enough for the proof and the second for the status.
func (s openingShape) sane() openingShape {
	var out openingShape
	total := 0
	for _, n := range s {
		n = min(max(n, frameHeaderLen), maxFrameBody+frameHeaderLen)
		if len(out) == maxShapeRecords || total+n > maxShapeBytes {
			break
		}
		out, total = append(out, n), total+n
	}
	for len(out) < 2 {
		out = append(out, statusFrameMin)
	}
	out[0] = max(out[0], proofOpeningLen)
	out[1] = max(out[1], statusFrameMin)
	return out
}

// within returns the shape cut, after its first two records, to at most
// a quarter of a carrier's budget (none: the whole shape): a face with a
// large front page must not spend a budget carrier on padding. A browser
// on such a path sees the page cut short by the freeze just the same.
func (s openingShape) within(budget int) openingShape {
	if budget <= 0 || len(s) <= 2 {
		return s
	}
	total := s[0] + s[1]
	for i := 2; i < len(s); i++ {
		if total += s[i]; total > budget/4 {
			return s[:i]
		}
	}
	return s
}

// recordTap records the lengths and content types of the TLS records read
// through it.
type recordTap struct {
	net.Conn
	mu      sync.Mutex
	buf     []byte // a partial record header
	skip    int    // bytes of the current record's body still to pass
	records []tapRecord
	done    bool  // the peer's end came
	err     error // how, if not a FIN
}

// ended reports whether the peer's end came; endErr how (nil: a FIN).
func (t *recordTap) ended() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done
}

func (t *recordTap) endErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

type tapRecord struct {
	typ byte
	len int
	at  time.Time
}

func (t *recordTap) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil && !t.done {
		t.done, t.err = true, err
		if err == io.EOF {
			t.err = nil
		}
	}
	b := p[:n]
	for len(b) > 0 {
		if t.skip > 0 {
			k := min(t.skip, len(b))
			t.skip -= k
			b = b[k:]
			continue
		}
		k := min(5-len(t.buf), len(b))
		t.buf = append(t.buf, b[:k]...)
		b = b[k:]
		if len(t.buf) == 5 {
			l := int(binary.BigEndian.Uint16(t.buf[3:]))
			t.records = append(t.records, tapRecord{typ: t.buf[0], len: l, at: time.Now()})
			t.buf, t.skip = t.buf[:0], l
		}
	}
	return n, err
}

// count returns how many records have been seen and when the last came.
func (t *recordTap) count() (int, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.records) == 0 {
		return 0, time.Time{}
	}
	return len(t.records), t.records[len(t.records)-1].at
}

// lengths returns the plaintext lengths of the encrypted records from
// index i on, skipping the first skip of them.
func (t *recordTap) lengths(from, to int) []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []int
	for _, r := range t.records[from:min(to, len(t.records))] {
		if r.typ == 23 && r.len > recordOverhead13 {
			out = append(out, r.len-recordOverhead13)
		}
	}
	return out
}

// encryptedAt returns the index just past the k-th encrypted record, or -1.
func (t *recordTap) encryptedAt(k int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, r := range t.records {
		if r.typ == 23 {
			if k--; k == 0 {
				return i + 1
			}
		}
	}
	return -1
}

// waitQuiet waits until no record has been read for shapeQuiet (someone
// must be reading), and returns how many have been.
func (t *recordTap) waitQuiet(ctx context.Context) int {
	start := time.Now()
	for {
		n, last := t.count()
		if last.Before(start) {
			last = start
		}
		wait := shapeQuiet - time.Since(last)
		if wait <= 0 {
			return n
		}
		select {
		case <-ctx.Done():
			return n
		case <-time.After(wait):
		}
	}
}

// handshakeRecords is how many encrypted records a TLS 1.3 server's flight
// has when each handshake message is its own record, as Go and OpenSSL
// write them: EncryptedExtensions, Certificate, CertificateVerify,
// Finished.
const handshakeRecords = 4

// learnShape visits a face over raw as Chromium would (its hello, its
// HTTP/2 preface, SETTINGS, WINDOW_UPDATE and a GET of the front page,
// its SETTINGS ACK) and returns the shape of the face's records after
// its handshake flight. own is how many records after the flight the
// tunnel's own TLS sends itself (Go's session ticket, when the tunnel
// shares the face's TLS configuration); they are not copied. The caller
// closes raw.
func learnShape(ctx context.Context, raw net.Conn, serverName, authority string, own int) (openingShape, error) {
	shape, _, err := visitFace(ctx, raw, serverName, authority, own, 0)
	return shape, err
}

// visitFace is learnShape, and then, if hold > 0, keeps the connection
// open and idle, as a browser tab left open would, for up to hold, and
// returns how long the face let it live idle after its response (0 if
// it outlived hold).
func visitFace(parent context.Context, raw net.Conn, serverName, authority string, own int, hold time.Duration) (openingShape, time.Duration, error) {
	ctx, cancel := context.WithTimeout(parent, shapeLearnTimeout)
	defer cancel()
	parent, stop := context.WithCancel(parent)
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	tap := &recordTap{Conn: raw}
	uc, err := newUConn(tap, &utls.Config{ServerName: serverName, InsecureSkipVerify: true, NextProtos: []string{"h2"}}, "chrome")
	if err != nil {
		return nil, 0, err
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		return nil, 0, fmt.Errorf("TLS handshake: %w", err)
	}
	if p := uc.ConnectionState().NegotiatedProtocol; p != "h2" {
		return nil, 0, fmt.Errorf("the face does not speak HTTP/2 (ALPN %q)", p)
	}
	// Read the face's frames from here on (the tap sees records only
	// as they are read).
	frames := make(chan http2.Frame, 64)
	readErr := make(chan error, 1)
	go func() {
		rf := http2.NewFramer(nil, uc)
		for {
			f, err := rf.ReadFrame()
			if err != nil {
				readErr <- err
				close(frames)
				return
			}
			// The framer reuses DATA frames' memory: pass on what
			// matters only.
			select {
			case frames <- f:
			case <-parent.Done():
				return
			}
		}
	}()
	var first, second, ack bytes.Buffer
	first.WriteString(http2.ClientPreface)
	w := http2.NewFramer(&first, nil)
	w.WriteSettings(chromeSettings...)
	w.WriteWindowUpdate(0, chromeConnWindow)
	http2.NewFramer(&second, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1,
		BlockFragment: chromeRequestHeaders(authority), EndStream: true, EndHeaders: true,
		Priority: http2.PriorityParam{Weight: 255, Exclusive: true}})
	http2.NewFramer(&ack, nil).WriteSettingsAck()
	for _, b := range [][]byte{first.Bytes(), second.Bytes()} {
		if _, err := uc.Write(b); err != nil {
			return nil, 0, err
		}
	}
	// Read until the response ends, acknowledging the server's SETTINGS
	// as a browser does.
	for done := false; !done; {
		var f http2.Frame
		select {
		case f = <-frames:
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("reading the face's response: %w", ctx.Err())
		}
		if f == nil {
			return nil, 0, fmt.Errorf("reading the face's response: %w", <-readErr)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if _, err := uc.Write(ack.Bytes()); err != nil {
					return nil, 0, err
				}
			}
		case *http2.DataFrame:
			done = f.StreamEnded()
		case *http2.HeadersFrame:
			done = f.StreamEnded()
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			done = true
		}
	}
	n := tap.waitQuiet(ctx)
	flight := tap.encryptedAt(handshakeRecords)
	if flight < 0 {
		return nil, 0, errors.New("the face's handshake flight has fewer than four encrypted records")
	}
	shape := openingShape(tap.lengths(flight+own, n))
	if len(shape) == 0 {
		return nil, 0, errors.New("the face sent no response")
	}
	if hold <= 0 {
		return shape, 0, nil
	}
	// Idle: answer what a browser answers, until the face ends the
	// connection (a GOAWAY, or its end) or hold passes.
	_, idleFrom := tap.count() // the response's last record
	raw.SetDeadline(idleFrom.Add(hold))
	for {
		var f http2.Frame
		select {
		case f = <-frames:
		case <-parent.Done():
			return nil, 0, parent.Err()
		}
		if f == nil {
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				uc.Write(ack.Bytes())
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				var pong bytes.Buffer
				http2.NewFramer(&pong, nil).WritePing(true, f.Data)
				uc.Write(pong.Bytes())
			}
		case *http2.GoAwayFrame:
			return shape, time.Since(idleFrom), nil
		}
	}
	var ne net.Error
	if err := <-readErr; errors.As(err, &ne) && ne.Timeout() {
		return shape, 0, nil
	}
	return shape, time.Since(idleFrom), nil
}

// Chromium 156's connection opening: SETTINGS HEADER_TABLE_SIZE 65536,
// ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 6 MiB, MAX_HEADER_LIST_SIZE 256 KiB,
// and a connection WINDOW_UPDATE of 15 MiB.
var chromeSettings = []http2.Setting{
	{ID: http2.SettingHeaderTableSize, Val: 65536},
	{ID: http2.SettingEnablePush, Val: 0},
	{ID: http2.SettingInitialWindowSize, Val: 6291456},
	{ID: http2.SettingMaxHeaderListSize, Val: 262144},
}

const chromeConnWindow = 15663105

// chromeRequestFields returns the header fields of Chromium 156's
// navigation to https://authority/: first what a server reads, then,
// last, the fields a tunnel's opening may leave out to make room.
func chromeRequestFields(authority string) []hpack.HeaderField {
	var out []hpack.HeaderField
	for _, f := range [][2]string{
		{":method", "GET"}, {":authority", authority}, {":scheme", "https"}, {":path", "/"},
		{"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"},
		{"accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"},
		{"accept-encoding", "gzip, deflate, br, zstd"}, {"accept-language", "en-US,en;q=0.9"},
		{"sec-ch-ua", `"Chromium";v="156", "Not-A.Brand";v="24"`},
		{"sec-ch-ua-mobile", "?0"}, {"sec-ch-ua-platform", `"Linux"`},
		{"sec-fetch-site", "none"}, {"sec-fetch-mode", "navigate"}, {"sec-fetch-dest", "document"},
		{"upgrade-insecure-requests", "1"}, {"sec-fetch-user", "?1"}, {"priority", "u=0, i"},
	} {
		out = append(out, hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return out
}

// hpackBlock encodes fields as a fresh connection's first header block.
func hpackBlock(fields []hpack.HeaderField) []byte {
	var b bytes.Buffer
	e := hpack.NewEncoder(&b)
	for _, f := range fields {
		e.WriteField(f)
	}
	return b.Bytes()
}

// chromeRequestHeaders returns an HPACK block like Chromium 156's for a
// navigation to https://authority/.
func chromeRequestHeaders(authority string) []byte {
	return hpackBlock(chromeRequestFields(authority))
}

// chromeRequestLen is the plaintext length of the record that carries
// Chromium 156's first request to authority: measured 445 bytes for
// "127.0.0.1:8443" and 448 for "example.test:8443"; the host name is
// Huffman-coded, the rest does not change between sites.
func chromeRequestLen(authority string) int {
	const measured, measuredFor = 445, "127.0.0.1:8443"
	return measured - int(hpack.HuffmanEncodeLength(measuredFor)) + int(hpack.HuffmanEncodeLength(authority))
}

// shapeSamples is how many visits a bridge makes each time it learns its
// face: a server's flushes put the same frames in one record or two by
// timing, so one visit is one draw, and tunnels draw among several.
const shapeSamples = 3

// openingShape returns the shape the tunnel's openings copy: one of the
// face's, once learned, else Go's.
func (s *Server) openingShape() openingShape {
	if p := s.shape.Load(); p != nil && len(*p) > 0 {
		return (*p)[mrand.IntN(len(*p))]
	}
	return goFaceShape.sane()
}

// learnFaceShape visits the face once and returns its shape. A site face
// is visited over an in-memory connection handed to it as a stranger's
// would be; a cover is visited over the network, as genuine clients'
// browsers would visit it.
func (s *Server) learnFaceShape(ctx context.Context) (openingShape, error) {
	name := ""
	if len(s.cfg.ServerNames) > 0 {
		name = s.cfg.ServerNames[0]
	}
	if s.site != nil {
		client, server := net.Pipe()
		defer client.Close()
		s.site.serve(server)
		// The tunnel shares the face's TLS configuration, so it sends
		// Go's session ticket itself.
		own := 1
		if s.tunnelTLS.SessionTicketsDisabled {
			own = 0
		}
		return learnShape(ctx, client, name, cmp.Or(name, "127.0.0.1"), own)
	}
	f := s.cfg.Cover
	name = s.coverName()
	raw, err := f.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	return learnShape(ctx, raw, name, cmp.Or(name, f.Address), 0)
}

// watchFaceShape keeps s.shape current until the server closes: learned
// at start, again every coverProbeInterval (a site's pages and a cover's
// configuration change), sooner after a failure.
func (s *Server) watchFaceShape() {
	defer s.wg.Done()
	wait := 2 * time.Second
	for {
		var shapes []openingShape
		var err error
		for range shapeSamples {
			var shape openingShape
			if shape, err = s.learnFaceShape(s.ctx); err != nil {
				break
			}
			shapes = append(shapes, shape.sane())
		}
		switch {
		case err == nil:
			s.shape.Store(&shapes)
			s.log.Debug("learned the face's opening records", "lengths", fmt.Sprint(shapes))
			wait = coverProbeInterval
		case s.ctx.Err() == nil:
			s.log.Warn("cannot visit the face to learn its opening records; tunnels open as a Go website does", "error", safelog.Error(err, false), "retry in", wait)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
		if err != nil {
			wait = min(2*wait, coverProbeInterval)
		}
	}
}

// finishVisit ends a visit to a website the way a browser would, after a
// carrier's opening met the face instead of the bridge (a censor raced
// our hello to the bridge, or the link is wrong): it reads what the site
// sends, acknowledging its SETTINGS and answering its PINGs, until the
// response to the opening's request is complete, then closes. head is
// what was read of the site's bytes already. It gives up after
// shapeLearnTimeout.
//
// It then closes as Chromium closes a connection, with a FIN and no
// close_notify (closeAsChromium), and reads what the site still sends (its
// close_notify, a GOAWAY) until it closes its side too, or for
// visitCloseWait. Closing the socket at once would leave those bytes
// unread, or have them arrive at a closed socket, and the kernel would
// answer with a reset: a visit that ends in a reset, seen now and then
// (TestLandingOnTheFaceIsAVisit, 30 runs in 1,500), where browsers end
// theirs with FINs.
func finishVisit(uc net.Conn, head []byte, authority string) {
	defer closeAsChromium(uc, nil, visitCloseWait)
	uc.SetDeadline(time.Now().Add(shapeLearnTimeout))
	fr := http2.NewFramer(uc, io.MultiReader(bytes.NewReader(head), uc))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if fr.WriteSettingsAck() != nil {
					return
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if fr.WritePing(true, f.Data) != nil {
					return
				}
			}
		case *http2.HeadersFrame:
			if f.StreamEnded() {
				return
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				return
			}
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			return
		}
	}
}

// visitCloseWait bounds how long finishVisit waits for the site to close
// its side: one long round trip, and the site's own time to close.
const visitCloseWait = 2 * time.Second

// maxIdleProbe is how long the bridge keeps an idle visit to its cover
// open to learn how long the cover lets idle connections live.
const maxIdleProbe = 10 * time.Minute

// watchCoverIdle keeps s.coverIdle current until the server closes: a
// visit to the cover left idle until the cover ends it, once per
// coverProbeInterval. Carriers idle that long are then ended as the cover
// would end them (closeIdle).
func (s *Server) watchCoverIdle() {
	defer s.wg.Done()
	f := s.cfg.Cover
	name := s.coverName()
	wait := 2 * time.Second
	for {
		raw, err := f.dial(s.ctx)
		if err == nil {
			var idle time.Duration
			_, idle, err = visitFace(s.ctx, raw, name, cmp.Or(name, f.Address), 0, maxIdleProbe)
			raw.Close()
			if err == nil {
				s.coverIdle.Store(int64(idle))
				s.log.Debug("learned how long the cover keeps idle connections", "idle", idle)
				wait = coverProbeInterval
			}
		}
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn("cannot visit the cover to learn its idle timeout", "error", safelog.Error(err, false), "retry in", wait)
			wait = min(2*wait, coverProbeInterval)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
