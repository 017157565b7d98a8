package transport

import (
	"context"
	"crypto/tls"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/mirage-pt/mirage/transport/auth"
	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/keys"
)

// groupX25519 is the TLS named group whose key share carries the client's
// ephemeral key (RFC 8446 4.2.7).
const groupX25519 = 0x001d

// Reasons a hello is not authenticated. They are only ever logged at debug
// level, never sent: the peer meets the face whatever the reason.
var (
	errNoTag       = errors.New("no 32-byte session id")
	errNoX25519    = errors.New("no X25519 key share")
	errBadVersion  = errors.New("unknown tag version")
	errClockSkew   = errors.New("timestamp outside the clock window")
	errUnknownID   = errors.New("unknown short id")
	errUnknownSNI  = errors.New("server name not accepted")
	errReplayedTag = errors.New("replayed tag")
	errBeforeStart = errors.New("timestamp before the server started")
	errRateLimited = errors.New("too many handshakes for this short id")
)

// serverHandshake is the state of one incoming connection while the server
// decides what it is.
type serverHandshake struct {
	srv      *Server
	raw      net.Conn
	start    time.Time
	consumed []byte      // every byte read from raw so far
	cover    *earlyCover // cover face: the cover connection opened at once
	key      [auth.KeyLen]byte
	shortID  keys.ShortID  // the authenticated client's
	tag      []byte        // the hello's tag, recorded when the handshake completes
	helloAt  time.Time     // when the hello was read
	rtt      time.Duration // from the hello to the client's Finished: a round trip
}

// classify reads the peer's ClientHello without answering and checks its
// tag. A nil error means an authenticated client; any error means the peer
// must meet the face, with hs.consumed replayed to it.
func (hs *serverHandshake) classify() error {
	hs.raw.SetReadDeadline(hs.start.Add(hs.srv.helloWait))
	if c := hs.srv.cfg.Cover; c != nil {
		// After the deadline is set: the cover may cut it short.
		hs.cover = c.dialEarly(hs.raw)
	}
	consumed, msg, err := hello.ReadClientHello(hs.raw)
	hs.consumed = consumed
	hs.raw.SetReadDeadline(time.Time{})
	if err != nil {
		return err
	}
	ch, err := hello.Parse(msg)
	if err != nil {
		return err
	}
	return hs.authenticate(ch)
}

// authenticate checks everything a genuine client's hello carries. The
// replay filter comes last, so only tags that verified are remembered and
// a flood of garbage cannot fill it.
func (hs *serverHandshake) authenticate(ch *hello.ClientHello) error {
	cfg := &hs.srv.cfg
	if len(ch.SessionID) != auth.TagLen {
		return errNoTag
	}
	share, ok := ch.KeyShare(groupX25519)
	if !ok || len(share) != auth.KeyLen {
		return errNoX25519
	}
	key, err := auth.ServerKey(hs.srv.privateKey, hs.srv.publicKey[:], share, ch.Random)
	if err != nil {
		return err
	}
	p, err := auth.Open(key, ch.Random, ch.AuthData(), ch.SessionID)
	if err != nil {
		return err
	}
	if p.Version != auth.Version {
		return errBadVersion
	}
	now := cfg.now()
	skew := now.Sub(time.Unix(int64(p.Time), 0))
	if skew < 0 {
		skew = -skew
	}
	if skew > cfg.maxClockSkew() {
		return errClockSkew
	}
	if int64(p.Time) < hs.srv.started {
		// The replay filter is new with the process: a tag from before
		// the start may have been accepted by the previous one.
		return errBeforeStart
	}
	if !hs.srv.acceptsShortID(p.ShortID) {
		return errUnknownID
	}
	if len(hs.srv.serverNames) > 0 {
		if _, ok := hs.srv.serverNames[strings.ToLower(ch.ServerName)]; !ok {
			return errUnknownSNI
		}
	}
	// With a site face the tag is only looked up here; it is recorded
	// once its handshake completes (tunnel), which only the key's holder
	// can do. Recording it now would let a censor that races a copy of a
	// genuine hello send the genuine connection to the face, and let a
	// link holder fill the filter with handshakes it never finishes. Both
	// copies meet the same TLS stack, with the face's deadline, so they
	// look alike until one finishes. A cover face cannot do that: its
	// tunnel's TLS is not the cover's, so a copy that went on to it would
	// show. There the first copy wins, as before.
	if hs.srv.site == nil {
		if hs.srv.filter.Seen(ch.SessionID, now) {
			return errReplayedTag
		}
	} else if hs.srv.filter.Has(ch.SessionID, now) {
		return errReplayedTag
	}
	// Looked up before the rate limit, so that replays of a user's
	// hellos do not spend that user's handshakes.
	if !hs.srv.limiter.Allow(p.ShortID, now) {
		return errRateLimited
	}
	hs.tag = append([]byte(nil), ch.SessionID...)
	hs.key = key
	hs.shortID = p.ShortID
	return nil
}

// tunnel completes TLS with an authenticated client, sends the proof and
// reads the client's opening. The caller answers with the status and
// the rest of the shape (see Server.carry). raw counts the carrier's bytes,
// the ClientHello's included.
func (hs *serverHandshake) tunnel(ctx context.Context) (sc *sealingConn, raw *countingConn, op clientOpeningInfo, shape openingShape, err error) {
	raw = &countingConn{Conn: hs.raw}
	raw.read.Store(int64(len(hs.consumed)))
	var pc net.Conn = newPrefixConn(raw, hs.consumed, 0)
	cfg := hs.srv.tunnelTLS
	if st := hs.srv.siteTunnel; st != nil {
		// Site face: the site's TLS, certificate bound to the key
		// (sitetls.go).
		cfg = st.config(hs.key)
	} else if cfg == nil {
		// Cover face: our own TLS, certificate bound to the key,
		// answering as the cover answers Chrome (covertls.go).
		if cfg, pc, err = hs.srv.coverTLS.Load().tunnelConfig(hs.key, pc); err != nil {
			return nil, nil, op, shape, err
		}
	}
	secret := &trafficSecretLog{label: serverTrafficSecret}
	tc := tls.Server(pc, withKeyLog(cfg, secret))
	// The face's deadline: a copy of a genuine hello that never finishes
	// (a replay) is dropped when the website would drop it.
	deadline := hs.start.Add(hs.srv.helloWait)
	tc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, nil, op, shape, fmt.Errorf("TLS handshake: %w", err)
	}
	hs.rtt = time.Since(hs.helloAt)
	state := tc.ConnectionState()
	if state.Version != tls.VersionTLS13 {
		// Only a client that sent a TLS 1.3 hello has a tag, so this
		// cannot happen with a genuine client.
		return nil, nil, op, shape, ErrNotTLS13
	}
	if hs.srv.site != nil && hs.srv.filter.Seen(hs.tag, hs.srv.cfg.now()) {
		// Another copy of this hello completed first.
		return nil, nil, op, shape, errReplayedTag
	}
	exporter, err := state.ExportKeyingMaterial(auth.ExportLabel, nil, exporterLen)
	if err != nil {
		return nil, nil, op, shape, err
	}
	// The proof goes first, at once, in a record the size of the face's
	// first (a Go server's SETTINGS, a cover's first session ticket);
	// the status, which needs the client's opening, goes in the second.
	// The client sends its opening right after its Finished, so reading
	// it before answering costs no round trip.
	shape = hs.srv.openingShape()
	// Every write from here goes through sc, which seals records itself
	// once TLS would write only full ones (sealingConn); the proof, the
	// first record after the handshake, tells it the record sequence
	// number.
	sc = newSealingConn(tc, raw, recordSizeBoost)
	if err := sc.writeFirst(proofOpening(auth.ServerProof(hs.key, exporter), shape[0]), state.CipherSuite, secret.get()); err != nil {
		return nil, nil, op, shape, err
	}
	if op, err = readClientOpening(tc); err != nil {
		return nil, nil, op, shape, fmt.Errorf("reading client opening: %w", err)
	}
	return sc, raw, op, shape, nil
}

// boundCertificate makes a fresh ECDSA P-256 certificate whose signature
// field is not a signature but HMAC-SHA256(auth key, tbsCertificate): only
// this handshake's client can check it, and no two connections share a
// certificate a censor could block. (In TLS 1.3 the certificate is
// encrypted; the binding only matters to the client.) P-256 because browser
// hellos do not offer Ed25519 signatures; the key still signs
// CertificateVerify, so it must be a real key. Once the bridge has learned
// its cover, tunnels' certificates are coverTLS.certificate's instead:
// the same binding, with a key and chain like the cover's.
func boundCertificate(key [auth.KeyLen]byte) (tls.Certificate, error) {
	cert, err := SelfSignedCertificate(nil, 24*time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	var outer struct {
		TBS       asn1.RawValue
		Algorithm asn1.RawValue
		Signature asn1.BitString
	}
	if _, err := asn1.Unmarshal(cert.Certificate[0], &outer); err != nil {
		return tls.Certificate{}, err
	}
	sig := auth.CertSignature(key, outer.TBS.FullBytes)
	outer.Signature = asn1.BitString{Bytes: sig[:], BitLength: 8 * len(sig)}
	bound, err := asn1.Marshal(outer)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert.Certificate[0] = bound
	return cert, nil
}
