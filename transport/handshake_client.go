package transport

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/auth"
)

// helloIDs maps the fp= names of a link to the utls ClientHello each
// mimics; chrome (the default) and firefox are built by chromeSpec and
// firefoxSpec (fingerprint*.go), to match the browsers Debian ships now.
var helloIDs = map[string]utls.ClientHelloID{
	"safari": utls.HelloSafari_Auto,
	"ios":    utls.HelloIOS_Auto,
	"edge":   utls.HelloEdge_Auto,
}

// clientHandshake turns raw, a fresh TCP connection to the bridge, into an
// authenticated TLS connection: it sends a browser ClientHello carrying the
// tag, completes TLS 1.3, sends its opening and checks the server's proof.
// Nothing of the user's is sent before the proof checks out. The caller
// sets the deadline on raw.
func clientHandshake(ctx context.Context, raw net.Conn, cfg *ClientConfig) (net.Conn, error) {
	ucfg := &utls.Config{
		ServerName: cfg.ServerName,
		// The certificate is not what authenticates a bridge: the proof
		// below is, and it is bound to this TLS session by the exporter,
		// so a man in the middle with any certificate cannot forge it.
		InsecureSkipVerify: true,
	}
	uc, err := newUConn(raw, ucfg, cfg.Fingerprint)
	if err != nil {
		return nil, err
	}
	key, err := sealHello(uc, cfg)
	if err != nil {
		return nil, err
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("transport: TLS handshake with bridge: %w", err)
	}
	state := uc.ConnectionState()
	if state.Version != utls.VersionTLS13 {
		return nil, ErrNotTLS13
	}
	// Browser hellos offer renegotiation, and utls refuses to export keying
	// material while it is allowed. TLS 1.3 has no renegotiation anyway.
	ucfg.Renegotiation = utls.RenegotiateNever
	state = uc.ConnectionState()
	exporter, err := state.ExportKeyingMaterial(auth.ExportLabel, nil, exporterLen)
	if err != nil {
		return nil, fmt.Errorf("transport: TLS exporter: %w", err)
	}
	// The client's opening goes out before the proof comes in, as a
	// browser sends its HTTP/2 preface without waiting. It carries nothing
	// but padding, so nothing of the user's leaves before the proof.
	op := clientOpening(randRead)
	for _, part := range [][]byte{op[:clientPrefaceLen], op[clientPrefaceLen:]} {
		if _, err := uc.Write(part); err != nil {
			return nil, fmt.Errorf("transport: writing to bridge: %w", err)
		}
	}
	proof, err := readServerOpening(uc)
	if err != nil {
		if errors.Is(err, errBadOpening) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// A website that got our opening instead of a request
			// closes the connection: this is not the bridge.
			return nil, ErrNotBridge
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// A website waits for the client's request: silence after
			// the handshake is what a non-bridge looks like.
			return nil, fmt.Errorf("%w (no proof within the handshake timeout)", ErrNotBridge)
		}
		return nil, fmt.Errorf("transport: reading the bridge's proof: %w", err)
	}
	if !auth.VerifyServerProof(key, exporter, proof) {
		return nil, ErrNotBridge
	}
	return uc, nil
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
	aad := bytes.Clone(hs.Hello.Raw)
	random := hs.Hello.Random
	key, err = auth.ClientKey(priv.Bytes(), cfg.PublicKey[:], random)
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
//	server opening = proof(32) | padding length(2, BE) | padding
//	client opening =             padding length(2, BE) | padding
//
// Their sizes imitate the first application records of an HTTP/2
// connection, as measured here between Chromium 156 and Go's h2 server:
// the browser sends its preface, SETTINGS and WINDOW_UPDATE (70 bytes, one
// record), then its first HEADERS (about 450 bytes) in a second record;
// the server sends SETTINGS and WINDOW_UPDATE (39 bytes). So the client's
// opening goes out in two writes, the first clientPrefaceLen bytes long.
const (
	exporterLen       = 32
	maxOpeningPadding = 4096
	clientPrefaceLen  = 70                         // h2 preface 24 + SETTINGS 33 + WINDOW_UPDATE 13
	clientPadMin      = clientPrefaceLen - 2 + 380 // second record: 380-519 bytes, like HEADERS
	clientPadSpan     = 140
	serverPadMin      = 39 - auth.ProofLen - 2 // 39 bytes in all, like Go's SETTINGS + WINDOW_UPDATE
	serverPadSpan     = 1
)

var errBadOpening = errors.New("transport: malformed opening")

// randRead is the source of padding lengths; a variable so tests can fix it.
var randRead = rand.Read

func paddingLen(randRead func([]byte) (int, error), min, span int) int {
	var b [2]byte
	if _, err := randRead(b[:]); err != nil {
		return min
	}
	return min + int(binary.BigEndian.Uint16(b[:]))%span
}

func clientOpening(randRead func([]byte) (int, error)) []byte {
	n := paddingLen(randRead, clientPadMin, clientPadSpan)
	b := make([]byte, 2+n)
	binary.BigEndian.PutUint16(b, uint16(n))
	return b
}

func serverOpening(proof [auth.ProofLen]byte, randRead func([]byte) (int, error)) []byte {
	n := paddingLen(randRead, serverPadMin, serverPadSpan)
	b := make([]byte, auth.ProofLen+2+n)
	copy(b, proof[:])
	binary.BigEndian.PutUint16(b[auth.ProofLen:], uint16(n))
	return b
}

// readServerOpening reads the server's opening and returns its proof.
func readServerOpening(r io.Reader) ([]byte, error) {
	buf := make([]byte, auth.ProofLen+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	if err := skipPadding(r, buf[auth.ProofLen:]); err != nil {
		return nil, err
	}
	return buf[:auth.ProofLen], nil
}

// readClientOpening reads and discards the client's opening.
func readClientOpening(r io.Reader) error {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	return skipPadding(r, n[:])
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
