package transport

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"sync"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/auth"
)

// In cover mode an authenticated client's TLS is the bridge's own (Go's
// crypto/tls), not the cover's, and the two handshakes can be told apart
// by their sizes alone: the cipher suite sets the Finished record's length
// (a SHA-384 suite's is 16 bytes longer), the certificate's key type sets
// CertificateVerify's, the chain sets Certificate's, and the group sets
// the ServerHello's and whether a HelloRetryRequest comes first. So the
// bridge asks the cover with Chrome's hello what it answers (coverTLS),
// and a tunnel answers the same (coverTunnelConfig).

// coverTLS is what the cover answers Chrome's ClientHello.
type coverTLS struct {
	group tls.CurveID // the key exchange group of its ServerHello
	hrr   bool        // it asked for that group with a HelloRetryRequest
	suite uint16      // the cipher suite
	// flight is the record lengths (the records' length fields) of the
	// cover's encrypted handshake flight: EncryptedExtensions,
	// Certificate, CertificateVerify, Finished, when each came in a
	// record of its own, as OpenSSL and Go write them; nil otherwise.
	flight []int
	// chain is the certificates the cover sent, leaf first, as sent.
	chain [][]byte
	// key is the leaf's key type and size.
	key keySpec

	// Made from the above once per learning round, not per connection.
	signer    crypto.Signer // a key like the cover's leaf's, for CertificateVerify
	fillerLen int           // filler bytes in our leaf for its Certificate record to be the cover's length
	serialLen int           // the length of our leaf's serial number, which takes a byte or two of slack
	padded    bool          // the lengths are equal

	// The leaf every tunnel binds afresh (bindLeaf costs 3 µs, making a
	// leaf 90 µs: an ECDSA signature x509 insists on). Remade hourly so
	// that its validity stays as described; tunnels differ by their
	// binding, and only their own client sees their certificate.
	leafMu sync.Mutex
	leaf   []byte
	leafAt time.Time
}

// keySpec is a certificate key's type and size.
type keySpec struct {
	alg  x509.PublicKeyAlgorithm
	bits int // RSA modulus size, or the ECDSA curve's size
}

func (k keySpec) String() string { return fmt.Sprintf("%v-%d", k.alg, k.bits) }

// specOf returns the key type and size of a certificate's public key.
func specOf(pub any) (keySpec, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return keySpec{x509.RSA, k.N.BitLen()}, nil
	case *ecdsa.PublicKey:
		return keySpec{x509.ECDSA, k.Curve.Params().BitSize}, nil
	}
	return keySpec{}, fmt.Errorf("transport: the cover's certificate has a %T key, which a tunnel cannot imitate", pub)
}

// The largest RSA key a tunnel imitates: generating one takes seconds and
// signing with it is slow; covers with larger keys are rare.
const maxRSABits = 4096

// Keys made for tunnels, by spec, once per process: generating an RSA key
// takes from a tenth of a second (2048 bits) to seconds (4096), far too
// long for each connection. The key is only used to sign the handshake;
// what makes each tunnel's certificate its own is its HMAC binding.
var (
	tunnelKeysMu sync.Mutex
	tunnelKeys   = map[keySpec]crypto.Signer{}
)

// tunnelKey returns the process's key of the given spec, making it the
// first time.
func tunnelKey(spec keySpec) (crypto.Signer, error) {
	tunnelKeysMu.Lock()
	defer tunnelKeysMu.Unlock()
	if k, ok := tunnelKeys[spec]; ok {
		return k, nil
	}
	var k crypto.Signer
	var err error
	switch {
	case spec.alg == x509.RSA && spec.bits >= 2048 && spec.bits <= maxRSABits:
		k, err = rsa.GenerateKey(rand.Reader, spec.bits)
	case spec.alg == x509.ECDSA && spec.bits == 256:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case spec.alg == x509.ECDSA && spec.bits == 384:
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case spec.alg == x509.ECDSA && spec.bits == 521:
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	default:
		return nil, fmt.Errorf("transport: cannot make a %v key for tunnels", spec)
	}
	if err != nil {
		return nil, err
	}
	tunnelKeys[spec] = k
	return k, nil
}

// issuerKey signs tunnel certificates' TBS only because x509 needs some
// signature to build one; boundLeaf replaces it with the HMAC binding.
var issuerKey = sync.OnceValues(func() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
})

// fillerOID names the non-critical extension that pads a tunnel's leaf to
// the length of the cover's. Any OID would do: the certificate is
// encrypted, so only the client, which ignores the extension, sees it.
var fillerOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1}

// boundLeaf makes a tunnel's leaf for pub, padded with filler bytes of
// extension content (none if filler is 0), with a serial number of
// serialLen bytes, and binds it to key: its signature field is
// HMAC-SHA256(key, tbsCertificate) (see boundCertificate). Its length
// depends on filler and serialLen only: the dates are always UTCTime.
func boundLeaf(key [auth.KeyLen]byte, pub crypto.PublicKey, filler, serialLen int) ([]byte, error) {
	issuer, err := issuerKey()
	if err != nil {
		return nil, err
	}
	// Random bits with the top one set just below the sign bit: exactly
	// serialLen bytes of DER, positive.
	top := 8*serialLen - 2
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(top)))
	if err != nil {
		return nil, err
	}
	serial.SetBit(serial, top, 1)
	now := time.Now().UTC().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if filler > 0 {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: fillerOID, Value: make([]byte, filler)}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, issuer)
	if err != nil {
		return nil, err
	}
	return bindLeaf(key, der)
}

// bindLeaf replaces der's signature with HMAC-SHA256(key, tbsCertificate).
func bindLeaf(key [auth.KeyLen]byte, der []byte) ([]byte, error) {
	var outer struct {
		TBS       asn1.RawValue
		Algorithm asn1.RawValue
		Signature asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &outer); err != nil {
		return nil, err
	}
	sig := auth.CertSignature(key, outer.TBS.FullBytes)
	outer.Signature = asn1.BitString{Bytes: sig[:], BitLength: 8 * len(sig)}
	return asn1.Marshal(outer)
}

// go13CertificateRecord is the length field of the record in which Go's
// TLS 1.3 server sends a chain of these DER lengths, with no OCSP staple
// and no SCTs: handshake header 4, context 1, list length 3, per
// certificate 3 + DER + 2 (its empty extensions), then the inner content
// type and the 16-byte AEAD tag.
func go13CertificateRecord(ders []int) int {
	n := 4 + 1 + 3
	for _, d := range ders {
		n += 3 + d + 2
	}
	return n + 1 + 16
}

// prepare makes what tunnels need from what was learned: the key, and the
// filler and serial length that bring our Certificate record to the
// cover's length. Run once per learning round, off the connection path.
func (ct *coverTLS) prepare() error {
	signer, err := tunnelKey(ct.key)
	if err != nil {
		return err
	}
	ct.signer = signer
	if len(ct.flight) != handshakeRecords {
		ct.serialLen = defaultSerialLen
		return nil // nothing to match: the cover packs its records
	}
	return ct.fit(ct.flight[1])
}

// fit finds the filler and serial length that make the record of a
// tunnel's chain (a leaf for ct.signer's key, then ct.chain's
// intermediates) want bytes long, and says in ct.padded whether it could.
func (ct *coverTLS) fit(want int) error {
	signer := ct.signer
	ct.serialLen, ct.padded = defaultSerialLen, false
	var zero [auth.KeyLen]byte
	ders := make([]int, len(ct.chain))
	for i, c := range ct.chain[1:] {
		ders[i+1] = len(c)
	}
	record := func(filler, serialLen int) (int, error) {
		leaf, err := boundLeaf(zero, signer.Public(), filler, serialLen)
		ders[0] = len(leaf)
		return go13CertificateRecord(ders), err
	}
	bare, err := record(0, defaultSerialLen)
	if err != nil || bare >= want {
		ct.padded = bare == want
		return err // a cover's leaf shorter than our bare one: no filler
	}
	// The record grows by a byte a filler byte, but for the steps where
	// a DER length takes one more byte (the filler's at 128 and 256
	// bytes, the extensions' and the certificate's at theirs), which skip
	// a length: a serial number a byte shorter takes it back. So find
	// the least filler that reaches want (the record only grows with it),
	// then shorten the serial if it overshot.
	lo, hi := 1, want
	for lo < hi {
		mid := (lo + hi) / 2
		got, err := record(mid, defaultSerialLen)
		if err != nil {
			return err
		}
		if got >= want {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	for _, sl := range []int{defaultSerialLen, defaultSerialLen - 1, defaultSerialLen - 2} {
		got, err := record(lo, sl)
		if err != nil {
			return err
		}
		if got == want {
			ct.fillerLen, ct.serialLen, ct.padded = lo, sl, true
			return nil
		}
	}
	return nil // not padded: the cover's record is only a few bytes longer than our bare one
}

// defaultSerialLen is the length of a tunnel leaf's serial number, as
// long as CAs' (RFC 5280 allows up to 20 octets; CAs use 16 to 20).
const defaultSerialLen = 16

// helloRetryRandom is the ServerHello.random of a HelloRetryRequest (RFC
// 8446 4.1.3).
var helloRetryRandom = [32]byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// readLog keeps the first bytes read through it (the server's records up
// to the end of its handshake flight), to be parsed afterwards.
type readLog struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

const readLogMax = 64 << 10

func (r *readLog) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	if len(r.buf) < readLogMax {
		r.buf = append(r.buf, p[:min(n, readLogMax-len(r.buf))]...)
	}
	r.mu.Unlock()
	return n, err
}

// logRecord is one TLS record's header, and its first bytes.
type logRecord struct {
	typ  byte
	len  int
	body []byte // what the log holds of it
}

// records parses the records logged so far.
func (r *readLog) records() []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []logRecord
	for b := r.buf; len(b) >= 5; {
		n := int(binary.BigEndian.Uint16(b[3:5]))
		rec := logRecord{typ: b[0], len: n, body: b[5:min(len(b), 5+n)]}
		out = append(out, rec)
		if len(b) < 5+n {
			break
		}
		b = b[5+n:]
	}
	return out
}

// encryptedFlight returns the length fields of the first application_data
// records, at most handshakeRecords of them.
func encryptedFlight(recs []logRecord) []int {
	var out []int
	for _, r := range recs {
		if r.typ == 23 && len(out) < handshakeRecords {
			out = append(out, r.len)
		}
	}
	return out
}

// finishedRecord is the length field of the record holding a TLS 1.3
// Finished alone: header 4, the suite's hash, content type, tag.
func finishedRecord(suite uint16) int {
	if suite == tls.TLS_AES_256_GCM_SHA384 {
		return 4 + 48 + 1 + 16
	}
	return 4 + 32 + 1 + 16
}

// isTLS13Suite reports whether s is a TLS 1.3 cipher suite that Go has.
func isTLS13Suite(s uint16) bool {
	switch s {
	case tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256:
		return true
	}
	return false
}

// probeTLS asks the cover, with current Chrome's ClientHello (what genuine
// clients send), how it answers: its group (and whether it asked for it
// with a HelloRetryRequest), suite, certificate chain and the record
// lengths of its handshake flight. The certificate is checked as Chrome
// checks it, and the handshake aborted as Chrome aborts it when it does
// not verify (a cover with a name that its certificate lacks, or an
// interceptor): the bridge never finishes a handshake that the browser it
// imitates would not. Everything is learned either way: the check runs
// when utls has the certificate, and the rest of the flight is read
// before the connection is closed.
func (f *CoverFace) probeTLS(ctx context.Context, serverName string) (*coverTLS, error) {
	ctx, cancel := context.WithTimeout(ctx, coverProbeTimeout)
	defer cancel()
	raw, err := f.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	log := &readLog{Conn: raw}
	ac := &abortConn{Conn: log}
	cfg := certCheck{serverName: serverName}.config(ac)
	ct := &coverTLS{}
	check := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs utls.ConnectionState) error {
		ct.suite = cs.CipherSuite
		for _, c := range cs.PeerCertificates {
			ct.chain = append(ct.chain, c.Raw)
		}
		return check(cs)
	}
	uc, err := newUConn(ac, cfg, "chrome")
	if err != nil {
		return nil, err
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		if !errors.Is(err, ErrCertificate) {
			return nil, err
		}
		// Read the rest of the flight, as Chromium does before it
		// closes (see abortConn.drain), waiting for it if need be.
		buf := make([]byte, 16<<10)
		for len(encryptedFlight(log.records())) < handshakeRecords {
			if _, err := log.Read(buf); err != nil {
				break
			}
		}
	}
	sh := uc.HandshakeState.ServerHello
	if sh == nil || sh.ServerShare.Group == 0 {
		return nil, errors.New("transport: the cover's ServerHello names no group")
	}
	ct.group = tls.CurveID(sh.ServerShare.Group)
	recs := log.records()
	// ServerHello.random sits after the record header, the handshake
	// header and legacy_version.
	if len(recs) > 0 && recs[0].typ == 22 && len(recs[0].body) >= 4+2+32 {
		ct.hrr = [32]byte(recs[0].body[6:38]) == helloRetryRandom
	}
	if len(ct.chain) == 0 {
		return nil, errors.New("transport: the cover sent no certificate")
	}
	leaf, err := x509.ParseCertificate(ct.chain[0])
	if err != nil {
		return nil, err
	}
	if ct.key, err = specOf(leaf.PublicKey); err != nil {
		return nil, err
	}
	// Four records ending with a lone Finished: one message a record.
	if fl := encryptedFlight(recs); len(fl) == handshakeRecords && fl[3] == finishedRecord(ct.suite) {
		ct.flight = fl
	}
	return ct, nil
}

// forceSuite makes crypto/tls pick want from a client's cipher suites,
// which it otherwise picks itself (AES-128-GCM first): crypto/tls has no
// setting for TLS 1.3 suites (Config.CipherSuites applies to TLS 1.2 and
// below only). suites must be the ClientHelloInfo.CipherSuites that
// GetConfigForClient is given, which is the slice crypto/tls picks from;
// every other TLS 1.3 suite in it is overwritten with 0, a suite no one
// has. The transcript is unaffected: crypto/tls hashes the hello's
// original bytes. restore puts the slice back as it was; it must run
// before a second ClientHello (after a HelloRetryRequest) is compared
// with the first, that is, before the server's first write. A nil
// restore means nothing was changed (want is not offered, or not a TLS
// 1.3 suite). If a Go release copied the slice, this would silently
// change nothing; TestCoverHandshakeShapes would catch it.
func forceSuite(suites []uint16, want uint16) (restore func()) {
	if !isTLS13Suite(want) || !slices.Contains(suites, want) {
		return nil
	}
	orig := slices.Clone(suites)
	for i, s := range suites {
		if s != want && isTLS13Suite(s) {
			suites[i] = 0
		}
	}
	return func() { copy(suites, orig) }
}

// certificate returns a tunnel's certificate: a leaf bound to key, with a
// key like the cover leaf's and padded to its length, followed by the
// cover's own intermediates, verbatim. Before anything is learned it is
// boundCertificate's.
func (ct *coverTLS) certificate(key [auth.KeyLen]byte) (tls.Certificate, error) {
	if ct == nil || ct.signer == nil {
		return boundCertificate(key)
	}
	ct.leafMu.Lock()
	if ct.leaf == nil || time.Since(ct.leafAt) > time.Hour {
		var zero [auth.KeyLen]byte
		l, err := boundLeaf(zero, ct.signer.Public(), ct.fillerLen, ct.serialLen)
		if err != nil {
			ct.leafMu.Unlock()
			return tls.Certificate{}, err
		}
		ct.leaf, ct.leafAt = l, time.Now()
	}
	tmpl := ct.leaf
	ct.leafMu.Unlock()
	leaf, err := bindLeaf(key, tmpl)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain := append([][]byte{leaf}, ct.chain[1:]...)
	return tls.Certificate{Certificate: chain, PrivateKey: ct.signer}, nil
}

// tunnelConfig returns the TLS configuration of a cover-mode tunnel for
// the client bound to key, answering as the cover answers Chrome (ct may
// be nil: nothing learned yet), and the connection to hand tls.Server,
// which wraps c for forceSuite's restore.
func (ct *coverTLS) tunnelConfig(key [auth.KeyLen]byte, c net.Conn) (*tls.Config, net.Conn, error) {
	cert, err := ct.certificate(key)
	if err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
		// The cover's session tickets, if it sends any, are copied
		// with the rest of its opening records (faceshape.go); Go's
		// own, sent with its Finished, would be one more record than
		// the cover sends, and at the wrong time.
		SessionTicketsDisabled: true,
	}
	if ct == nil {
		return cfg, c, nil
	}
	fc := &firstWriteConn{Conn: c}
	base := cfg.Clone()
	cfg.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		if goSupportsGroup(ct.group) && slices.Contains(chi.SupportedCurves, ct.group) {
			// The cover's group alone: crypto/tls ignores the order
			// of CurvePreferences and prefers a group the client sent
			// a key share for, so with more than one listed it would
			// answer x25519 at once where the cover (secp384r1 only)
			// asks for P-384 with a HelloRetryRequest.
			base.CurvePreferences = []tls.CurveID{ct.group}
		}
		fc.before = forceSuite(chi.CipherSuites, ct.suite)
		return base, nil
	}
	return cfg, fc, nil
}

// firstWriteConn runs before, once, ahead of the first write.
type firstWriteConn struct {
	net.Conn
	before func()
}

func (c *firstWriteConn) Write(p []byte) (int, error) {
	if c.before != nil {
		c.before()
		c.before = nil
	}
	return c.Conn.Write(p)
}

// NetConn returns the wrapped connection, for unwrapConn.
func (c *firstWriteConn) NetConn() net.Conn { return c.Conn }
