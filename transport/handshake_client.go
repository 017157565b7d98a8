package transport

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"

	"github.com/mirage-pt/mirage/transport/auth"
	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/link"
)

// opened is a carrier's connection once the handshake is done and the
// client's opening sent.
type opened struct {
	conn     net.Conn
	resumed  bool   // the TLS handshake resumed a session (tickets.go)
	status   byte   // the server's status
	received uint64 // bytes of the session the server has received
	// finish, when not nil, is what the client did not wait for: it
	// reads and checks the server's proof and status. The carrier's
	// reader calls it before anything else. Set for a new session's
	// first carrier whose certificate was bound to the auth key: the
	// bridge took the hello for its client's (only it can bind), so
	// the first stream may leave with the opening, a round trip before
	// the proof arrives (PROTOCOL.md §5, "Early data").
	finish func() error
}

// clientHello is a carrier's ClientHello, built and sealed before its TCP
// connection is up. Building it makes its key shares (Chrome's
// X25519MLKEM768 among them) and the tag: as much CPU as a loopback
// connect, and several milliseconds on a phone, which the connect's round
// trip hides when the two run side by side (Session.dialCarrier).
type clientHello struct {
	ac    *abortConn // its Conn is set once the TCP connection is up
	uc    *utls.UConn
	ucfg  *utls.Config
	key   [auth.KeyLen]byte
	bound bool // set by the certificate check: the certificate was bound to key
}

// buildHello makes the sealed ClientHello of cfg's fingerprint, over a
// connection still to come. With tickets, the handshake takes a ticket
// from them if they may resume, and keeps what it is given in them.
func buildHello(cfg *ClientConfig, tickets *carrierTickets) (*clientHello, error) {
	// The certificate must be one a browser would accept, or one only
	// the bridge can have sent (certCheck): the proof after the handshake
	// authenticates the bridge (it is bound to this TLS session by the
	// exporter), but a client that finished TLS with any certificate
	// would show an interceptor a handshake no browser finishes.
	h := &clientHello{ac: &abortConn{}}
	h.ucfg = certCheck{serverName: cfg.ServerName, pin: cfg.Pin, roots: cfg.RootCAs, key: &h.key, bound: &h.bound}.config(h.ac)
	if tickets != nil {
		h.ucfg.ClientSessionCache = tickets
	}
	uc, err := newUConn(h.ac, h.ucfg, cfg.Fingerprint)
	if err != nil {
		return nil, err
	}
	if h.key, err = sealHello(uc, cfg); err != nil {
		return nil, err
	}
	h.uc = uc
	return h, nil
}

// clientHandshake turns raw, a fresh TCP connection to the bridge, into an
// authenticated carrier: it sends h, completes TLS 1.3, sends its opening
// (op) and checks the server's proof. Nothing of the user's is sent before
// the proof checks out, or before a certificate bound to the auth key has
// shown that the bridge took the hello for its client's (then the proof is
// checked by the carrier's reader: opened.finish). The caller sets the
// deadline on raw. h serves one connection.
func clientHandshake(ctx context.Context, raw net.Conn, h *clientHello, cfg *ClientConfig, op *clientOpeningInfo) (*opened, error) {
	ac, uc, key := h.ac, h.uc, h.key
	ac.Conn = raw
	if err := uc.HandshakeContext(ctx); err != nil {
		if errors.Is(err, ErrCertificate) {
			ac.drain()
			return nil, err
		}
		return nil, fmt.Errorf("transport: TLS handshake with bridge: %w", err)
	}
	state := uc.ConnectionState()
	if state.Version != utls.VersionTLS13 {
		return nil, ErrNotTLS13
	}
	// Browser hellos offer renegotiation, and utls refuses to export keying
	// material while it is allowed. TLS 1.3 has no renegotiation anyway.
	h.ucfg.Renegotiation = utls.RenegotiateNever
	state = uc.ConnectionState()
	exporter, err := state.ExportKeyingMaterial(auth.ExportLabel, nil, exporterLen)
	if err != nil {
		return nil, fmt.Errorf("transport: TLS exporter: %w", err)
	}
	// The client's opening goes out before the proof comes in, as a
	// browser sends its HTTP/2 preface and first request without
	// waiting, and it is a browser's: Chromium's preface, SETTINGS and
	// WINDOW_UPDATE in one record, then a request for / whose HEADERS
	// frame carries the opening in its padding, in a record as long as
	// Chromium's. A website that gets it (a censor raced our hello to
	// the bridge, so this connection met the face) answers it as it
	// answers a browser.
	host := authority(cfg)
	// Every write from here goes through conn, which seals records
	// itself once it can (sealingConn): the preface, the first record
	// after the handshake, tells it the record sequence number.
	var conn net.Conn = uc
	if cc, ok := raw.(*countingConn); ok {
		sc := newSealingConn(uc, cc, 0)
		conn, err = sc, sc.writeFirst(chromePreface(), state.CipherSuite, ac.trafficSecret())
	} else {
		_, err = uc.Write(chromePreface())
	}
	if err == nil {
		_, err = conn.Write(op.marshal(host))
	}
	if err != nil {
		return nil, fmt.Errorf("transport: writing to bridge: %w", err)
	}
	fr := &frameReader{r: uc}
	if h.bound && op.New {
		return &opened{conn: conn, resumed: state.DidResume, status: statusResumed, finish: func() error {
			return finishEarlyOpening(conn, fr, key, exporter)
		}}, nil
	}
	head, err := readServerProof(fr, key, exporter)
	if errors.Is(err, errNotProof) {
		// A website: finish the visit as the browser would, and say
		// this is not the bridge.
		go finishVisit(conn, head, host)
		return nil, errLandedOnFace
	}
	if err != nil {
		if errors.Is(err, errBadOpening) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
			errors.Is(err, syscall.ECONNRESET) {
			// A website that closed the connection on us: this is not
			// the bridge.
			return nil, ErrNotBridge
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// Silence after the handshake: not the bridge.
			return nil, fmt.Errorf("%w (no proof within the handshake timeout)", ErrNotBridge)
		}
		return nil, fmt.Errorf("transport: reading the bridge's proof: %w", err)
	}
	status, received, err := ackAndReadStatus(conn, fr)
	if err != nil {
		return nil, err
	}
	return &opened{conn: conn, resumed: state.DidResume, status: status, received: received}, nil
}

// ackAndReadStatus sends the SETTINGS acknowledgement a browser sends on
// reading the server's first record (the proof's), then reads the STATUS.
// A bridge that refuses the carrier closes after its status, so the
// write may fail while the status is already in: it is read anyway, and
// a refusal is returned as the status, not as the write's error.
func ackAndReadStatus(uc net.Conn, fr *frameReader) (byte, uint64, error) {
	_, werr := uc.Write(padFrame(settingsAckLen))
	status, received, err := readStatus(fr)
	switch {
	case err != nil && werr != nil:
		return 0, 0, fmt.Errorf("transport: writing to bridge: %w", werr)
	case err != nil:
		return 0, 0, fmt.Errorf("transport: reading the bridge's status: %w", err)
	case werr != nil && status == statusResumed:
		return 0, 0, fmt.Errorf("transport: writing to bridge: %w", werr)
	}
	return status, received, nil
}

// finishEarlyOpening reads what a first carrier with early data did not
// wait for: the proof (the certificate already showed that the bridge
// took the hello for its client's, so anything else is a failure, not a
// website), the SETTINGS acknowledgement a browser sends on reading the
// server's first record, and the status of the new session. The caller
// sets the read deadline.
func finishEarlyOpening(uc net.Conn, fr *frameReader, key [auth.KeyLen]byte, exporter []byte) error {
	if _, err := readServerProof(fr, key, exporter); err != nil {
		return fmt.Errorf("transport: reading the bridge's proof: %w", err)
	}
	status, _, err := ackAndReadStatus(uc, fr)
	switch {
	case err != nil:
		return err
	case status == statusBusy:
		return errBridgeBusy
	case status != statusResumed:
		return fmt.Errorf("transport: the bridge refused the new session (status %d)", status)
	}
	return nil
}

// authority is what a browser would put in :authority for the bridge:
// its name, or the address it dials when there is none, with the port
// unless it is 443.
func authority(cfg *ClientConfig) string {
	host, port, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return cfg.Address
	}
	if cfg.ServerName != "" {
		host = cfg.ServerName
	}
	if port == "443" {
		return host
	}
	return net.JoinHostPort(host, port)
}

// sealHello builds the ClientHello of uc's fingerprint and writes the tag
// into its session_id. It returns the auth key.
func sealHello(uc *utls.UConn, cfg *ClientConfig) ([auth.KeyLen]byte, error) {
	var key [auth.KeyLen]byte
	if err := uc.BuildHandshakeState(); err != nil {
		return key, fmt.Errorf("transport: building ClientHello: %w", err)
	}
	hs := &uc.HandshakeState
	priv, err := x25519Share(hs)
	if err != nil {
		return key, err
	}
	// The tag is computed over the hello with a zeroed session_id, so
	// marshal it that way first. Only Hello.SessionId survives into the
	// wire bytes: patching Raw alone is lost at the next marshal.
	hs.Hello.SessionId = make([]byte, auth.TagLen)
	if err := uc.MarshalClientHello(); err != nil {
		return key, fmt.Errorf("transport: marshalling ClientHello: %w", err)
	}
	// The bridge reads the associated data off the hello it gets, so it
	// is made the same way here: the session_id, and the binders of a
	// resumption, zeroed (hello.ClientHello.AuthData).
	own, err := hello.Parse(hs.Hello.Raw)
	if err != nil {
		return key, fmt.Errorf("transport: the ClientHello built does not parse: %w", err)
	}
	aad := own.AuthData()
	random := hs.Hello.Random
	key, err = auth.ClientKey(priv, cfg.PublicKey[:], random)
	if err != nil {
		return key, err
	}
	tag, err := auth.Seal(key, random, aad, auth.Payload{
		Version: auth.Version,
		Time:    uint32(cfg.now().Unix()),
		ShortID: cfg.ShortID,
	})
	if err != nil {
		return key, err
	}
	hs.Hello.SessionId = tag[:]
	if err := uc.MarshalClientHello(); err != nil {
		return key, fmt.Errorf("transport: marshalling ClientHello: %w", err)
	}
	if len(hs.Hello.Raw) != len(aad) {
		return key, errors.New("transport: ClientHello changed size when the tag was added")
	}
	// A PSK's binders are a MAC over the hello up to them, the tag
	// included: computed by utls over the old session_id, they are
	// computed again now.
	if own.BindersOffset > 0 {
		for _, ext := range uc.Extensions {
			if psk, ok := ext.(*utls.UtlsPreSharedKeyExtension); ok {
				if err := psk.PatchBuiltHello(hs.Hello); err != nil && !errors.Is(err, io.EOF) {
					return key, fmt.Errorf("transport: PSK binders: %w", err)
				}
				hs.Hello.PskBinders = psk.Binders
			}
		}
	}
	return key, nil
}

// x25519Share returns the private key behind the hello's X25519 key share
// (group 0x001d). Every browser hello has one: Chrome sends it next to its
// X25519MLKEM768 share, the others as their first share.
func x25519Share(hs *utls.PubClientHandshakeState) (*ecdh.PrivateKey, error) {
	ks := hs.State13.KeyShareKeys
	if ks == nil || ks.Ecdhe == nil {
		return nil, errors.New("transport: ClientHello has no X25519 key share")
	}
	pub := ks.Ecdhe.PublicKey().Bytes()
	for _, s := range hs.Hello.KeyShares {
		if s.Group == utls.X25519 && bytes.Equal(s.Data, pub) {
			return ks.Ecdhe, nil
		}
	}
	return nil, errors.New("transport: ClientHello's X25519 key share does not match its private key")
}

// Openings: the first application data each way (PROTOCOL.md, "Openings").
//
//	client opening = Chromium's preface, SETTINGS, WINDOW_UPDATE (70 bytes, one record)
//	                 then HEADERS (stream 1, PADDED) whose padding starts with
//	                 session id(16) | flags(1) | carrier(4) | received(8) | budget(4)
//	server opening = proof(32) | padding length(2, BE) | padding, then frames: STATUS first
//
// They name the session this carrier joins and say where each direction
// resumes. Their records copy an HTTP/2 connection's first records (see
// faceshape.go): the client's are Chromium's, record for record; the
// server's proof, its STATUS frame and the PAD frames after it take the
// sizes of the face's records.
const (
	exporterLen       = 32
	maxOpeningPadding = maxFrameBody
	clientOpeningLen  = sessionIDLen + 1 + 4 + 8 + 4
	clientPrefaceLen  = 70 // h2 preface 24 + SETTINGS 33 + WINDOW_UPDATE 13
	settingsAckLen    = 9  // an empty SETTINGS frame with the ACK flag
	// HTTP/2 (RFC 9113 §6.2): HEADERS, its flags, and the bytes a
	// padded frame with priority adds before its header block.
	h2FrameHeaderLen = 9
	h2Headers        = 0x1
	h2EndStream      = 0x1
	h2EndHeaders     = 0x4
	h2Padded         = 0x8
	h2Priority       = 0x20
	h2PaddedPriority = 1 + 5
)

// Flags of the client opening.
const openNewSession = 0x01

// Status of the server opening.
const (
	statusResumed        = 0x00 // the carrier joined the session (or made it)
	statusUnknownSession = 0x01 // no such session here: start a new one
	statusBusy           = 0x02 // the bridge holds as many sessions as it may
)

var (
	errBadOpening = errors.New("transport: malformed opening")
	errNotProof   = errors.New("transport: the server's first bytes are not the bridge's proof")
	// errLandedOnFace is ErrNotBridge when a website answered the
	// opening: the connection is finishing its visit, not to be closed.
	errLandedOnFace = fmt.Errorf("%w (a website answered)", ErrNotBridge)
)

// clientHello is what a client opening says: which session the carrier
// joins and where the client's receiving resumes.
type clientOpeningInfo struct {
	Session  sessionID
	New      bool   // make the session (first carrier)
	Carrier  uint32 // the carrier's number within the session
	Received uint64 // bytes of the session the client has received
	Budget   int    // bytes the carrier may carry each way; 0: no budget
}

// chromePreface returns Chromium's first record after its Finished: the
// connection preface, its SETTINGS and its connection WINDOW_UPDATE.
func chromePreface() []byte {
	var b bytes.Buffer
	b.WriteString(http2.ClientPreface)
	w := http2.NewFramer(&b, nil)
	w.WriteSettings(chromeSettings...)
	w.WriteWindowUpdate(0, chromeConnWindow)
	return b.Bytes()
}

// marshal returns the opening's HEADERS frame: a request for / of
// authority, as long as Chromium's, with the opening at the start of the
// frame's padding. To make room for it, the request leaves out headers a
// server does not need, from the end of optionalHeaders.
func (o *clientOpeningInfo) marshal(authority string) []byte {
	want := chromeRequestLen(authority)
	fields := chromeRequestFields(authority)
	var block []byte
	for {
		block = hpackBlock(fields)
		room := want - h2FrameHeaderLen - h2PaddedPriority - len(block)
		if room >= clientOpeningLen || len(fields) <= 4 {
			break
		}
		fields = fields[:len(fields)-1]
	}
	pad := min(max(want-h2FrameHeaderLen-h2PaddedPriority-len(block), clientOpeningLen), 255)
	body := 1 + 5 + len(block) + pad
	b := make([]byte, 0, h2FrameHeaderLen+body)
	b = append(b, byte(body>>16), byte(body>>8), byte(body), h2Headers,
		h2EndStream|h2EndHeaders|h2Padded|h2Priority, 0, 0, 0, 1)
	// Padding length, then Chromium's priority: exclusive on stream 0,
	// weight 256.
	b = append(b, byte(pad), 0x80, 0, 0, 0, 255)
	b = append(b, block...)
	b = append(b, o.Session[:]...)
	var flags byte
	if o.New {
		flags |= openNewSession
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint32(b, o.Carrier)
	b = binary.BigEndian.AppendUint64(b, o.Received)
	b = binary.BigEndian.AppendUint32(b, uint32(o.Budget))
	return append(b, make([]byte, pad-clientOpeningLen)...)
}

// readClientOpening reads the client's opening: the preface record, then
// the HEADERS frame whose padding holds it.
func readClientOpening(r io.Reader) (clientOpeningInfo, error) {
	var o clientOpeningInfo
	buf := make([]byte, clientPrefaceLen+h2FrameHeaderLen)
	if _, err := io.ReadFull(r, buf); err != nil {
		return o, err
	}
	if !bytes.HasPrefix(buf, []byte(http2.ClientPreface)) {
		return o, errBadOpening
	}
	h := buf[clientPrefaceLen:]
	n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	if h[3] != h2Headers || h[4]&h2Padded == 0 || n > maxFrameBody || n < 1+clientOpeningLen {
		return o, errBadOpening
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return o, err
	}
	pad := int(body[0])
	if pad < clientOpeningLen || pad >= n {
		return o, errBadOpening
	}
	p := body[n-pad:]
	copy(o.Session[:], p)
	flags := p[sessionIDLen]
	if flags&^openNewSession != 0 {
		return o, errBadOpening
	}
	o.New = flags&openNewSession != 0
	o.Carrier = binary.BigEndian.Uint32(p[sessionIDLen+1:])
	o.Received = binary.BigEndian.Uint64(p[sessionIDLen+5:])
	budget := binary.BigEndian.Uint32(p[sessionIDLen+13:])
	if budget != 0 && (budget < link.MinBudget || budget > link.MaxBudget) {
		return o, errBadOpening
	}
	o.Budget = int(budget)
	return o, nil
}

// proofOpening returns the server's opening, size bytes long (at least
// proofOpeningLen).
func proofOpening(proof [auth.ProofLen]byte, size int) []byte {
	n := max(size-proofOpeningLen, 0)
	b := make([]byte, 0, proofOpeningLen+n)
	b = append(b, proof[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	return append(b, make([]byte, n)...)
}

// readServerProof reads the server's opening and checks its proof. If
// the proof is wrong, the peer is a website (HTTP/2 frames, not a proof):
// it returns errNotProof with the bytes read, which are the site's.
func readServerProof(fr *frameReader, key [auth.KeyLen]byte, exporter []byte) ([]byte, error) {
	buf := make([]byte, proofOpeningLen)
	if _, err := io.ReadFull(fr.r, buf); err != nil {
		return nil, err
	}
	if !auth.VerifyServerProof(key, exporter, buf[:auth.ProofLen]) {
		return buf, errNotProof
	}
	return nil, skipPadding(fr.r, buf[auth.ProofLen:])
}

// statusFrame returns a STATUS frame size bytes long (at least
// statusFrameMin).
func statusFrame(status byte, received uint64, size int) []byte {
	body := max(size-frameHeaderLen, statusBodyMin)
	b := make([]byte, 0, frameHeaderLen+body)
	b = append(b, frameStatus, byte(body>>8), byte(body))
	b = append(b, status)
	b = binary.BigEndian.AppendUint64(b, received)
	return append(b, make([]byte, body-statusBodyMin)...)
}

// readStatus reads the STATUS frame that follows the proof (PAD frames
// may come first) and returns the status and how many bytes of the
// session the server has received.
func readStatus(fr *frameReader) (byte, uint64, error) {
	for {
		typ, n, err := fr.header()
		if err != nil {
			return 0, 0, err
		}
		body, err := fr.readBody(n)
		if err != nil {
			return 0, 0, err
		}
		switch typ {
		case framePad:
			continue
		case frameStatus:
			return body[0], binary.BigEndian.Uint64(body[1:]), nil
		}
		return 0, 0, errBadOpening
	}
}

func skipPadding(r io.Reader, lenField []byte) error {
	n := int(binary.BigEndian.Uint16(lenField))
	if n > maxOpeningPadding {
		return errBadOpening
	}
	if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// deadlineFrom returns the earlier of ctx's deadline and now+d.
func deadlineFrom(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		return dl
	}
	return t
}
