package transport

import (
	"crypto/hkdf"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net"
	"sync"
	"sync/atomic"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/auth"
	"github.com/mirage-pt/mirage/transport/link"
)

// certCheck decides, inside the TLS handshake and before the client's
// Finished, whether the server's certificate is one a client may go on
// with. The bridge's proof comes only after the handshake, and by then a
// client that finished TLS with an impostor's certificate has done what no
// browser does (issue 8, item 3): a browser aborts as soon as it has the
// certificate. So the client accepts only what a browser would, or what
// only the bridge can have sent:
//
//   - a certificate bound to this handshake's auth key (a cover face's
//     tunnel; only the bridge can compute the binding);
//   - the certificate whose key the link pins (a self-signed site face);
//   - a chain valid for the server name under the roots (a site face with
//     a CA's certificate), as a browser checks it.
type certCheck struct {
	serverName string
	pin        link.Pin
	roots      *x509.CertPool // nil: the system's
	// key is this handshake's auth key; nil when the hello carries no tag
	// (BrowserRequest), so that no certificate is taken for bound.
	key *[auth.KeyLen]byte
	// bound, if not nil, is set when the certificate was bound to key:
	// the bridge took the hello for its client's (the proof will only
	// confirm it), so the client need not wait for the proof to send.
	bound *bool
}

// verify is utls's VerifyConnection: utls calls it once it has the
// certificate, before the rest of the server's flight is processed and
// before the client sends anything after its ClientHello but the
// compatibility ChangeCipherSpec.
func (c certCheck) verify(cs utls.ConnectionState) error {
	if cs.DidResume {
		// A resumed session's certificate was checked here when the
		// session was made, on a carrier whose proof then checked out
		// (carrierTickets keeps no other's tickets), and only the server
		// that issued the ticket can resume with it. The certificate
		// the session recorded is bound to that carrier's auth key, not
		// to this one's, so it is not checked again; this carrier waits
		// for the proof, as every carrier but a session's first does.
		return nil
	}
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return fmt.Errorf("%w: it sent none", ErrCertificate)
	}
	leaf := certs[0]
	if c.key != nil {
		sig := auth.CertSignature(*c.key, leaf.RawTBSCertificate)
		if subtle.ConstantTimeCompare(sig[:], leaf.Signature) == 1 {
			if c.bound != nil {
				*c.bound = true
			}
			return nil
		}
	}
	if !c.pin.IsZero() {
		got := link.SPKIPin(leaf.RawSubjectPublicKeyInfo)
		if subtle.ConstantTimeCompare(got[:], c.pin[:]) == 1 {
			return nil
		}
	}
	var chainErr error
	if c.serverName != "" {
		opts := x509.VerifyOptions{DNSName: c.serverName, Roots: c.roots, Intermediates: x509.NewCertPool()}
		for _, ic := range certs[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, chainErr = leaf.Verify(opts); chainErr == nil {
			return nil
		}
	}
	return c.failure(chainErr)
}

// config returns the utls configuration of a handshake over ac whose
// certificate c decides: utls's own verification knows neither pins nor
// bound certificates, so it is off, and c runs in VerifyConnection, which
// utls calls as soon as it has the certificate, before the client's
// Finished. A failure is aborted as Chromium aborts (abortConn).
func (c certCheck) config(ac *abortConn) *utls.Config {
	return &utls.Config{
		// An empty ServerName leaves server_name out of the hello (utls's
		// SNIExtension writes nothing for it) and changes nothing else:
		// what Chrome sends to an address typed as an IP.
		ServerName:         c.serverName,
		InsecureSkipVerify: true,
		VerifyConnection: func(cs utls.ConnectionState) error {
			err := c.verify(cs)
			if err != nil {
				ac.failed(cs.CipherSuite)
			}
			return err
		},
		// For the abort (abortConn) and sealingConn.
		KeyLogWriter: ac.keyLog(),
		// Chromium (BoringSSL) fills each record to what it was given,
		// up to 16 KiB, from a connection's first byte; Go's TLS, and so
		// utls, starts small and grows each record by 1,186 bytes until
		// 128 KiB have gone (dynamic record sizing). An upload on every
		// new carrier showed that progression, which no Chrome sends: a
		// capture of Chromium 156 posting 300 KB sent 16,401-byte
		// records from its first DATA on.
		DynamicRecordSizingDisabled: true,
	}
}

// failure says what went wrong and what the user can do about it.
func (c certCheck) failure(chainErr error) error {
	const advice = "someone may be intercepting this connection, or the link is old: get a fresh link from the bridge operator"
	switch {
	case c.serverName == "" && c.pin.IsZero():
		return fmt.Errorf("%w: the link has neither a server name (sni=) nor a certificate pin (pin=) to check it against, "+
			"and it is not bound to the bridge's key; %s", ErrCertificate, advice)
	case c.serverName == "":
		return fmt.Errorf("%w: it does not match the link's pin, and it is not bound to the bridge's key; %s", ErrCertificate, advice)
	case c.pin.IsZero():
		return fmt.Errorf("%w: it is not valid for %s (%v), and it is not bound to the bridge's key; %s", ErrCertificate, c.serverName, chainErr, advice)
	}
	return fmt.Errorf("%w: it is not valid for %s (%v), and matches neither the link's pin nor the bridge's key; %s",
		ErrCertificate, c.serverName, chainErr, advice)
}

// The abort. Chromium 156, measured on loopback against a server with a
// self-signed certificate (testdata/chromium-156-abort.json), answers the
// server's flight with one TCP segment holding the compatibility
// ChangeCipherSpec and one encrypted alert record (19 bytes: fatal
// certificate_unknown), then closes with a FIN. utls sends the same two
// records in one write, but its alert is bad_certificate (42), whatever
// the callback returns; encrypted, the two differ only to the server,
// which is the interceptor that decrypts them. abortConn, between utls and
// the socket, swaps utls's alert record for Chromium's. It learns the
// client's handshake traffic secret, which encrypts that record, from
// utls's key log.

// drain reads, without waiting, what the server sent that utls had not
// read when the check failed (the rest of its flight). Chromium has read
// it by the time it closes, so its close is a FIN; a socket closed with
// unread bytes sends a RST instead. Bounded, so a server that keeps
// sending cannot keep the client here.
func (a *abortConn) drain() {
	c := a.Conn
	if cc, ok := c.(*countingConn); ok {
		c = cc.Conn
	}
	c = unwrapConn(c)
	buf := make([]byte, 16<<10)
	for range 64 {
		if readAvailable(c, buf) == 0 {
			return
		}
	}
}

// alertCertificateUnknown is the TLS alert Chromium sends on a certificate
// it does not trust.
const alertCertificateUnknown = 46

// abortConn passes writes through until the certificate check failed, and
// then writes, in place of utls's encrypted alert, Chromium's.
type abortConn struct {
	net.Conn

	// suite is the cipher suite once the check has failed, 0 until
	// then: an atomic, as every write of the carrier looks at it.
	suite   atomic.Uint32
	mu      sync.Mutex
	secret  []byte // client handshake traffic secret
	traffic []byte // client application traffic secret (sealingConn)
}

// RemoteAddr is the connection's, or a placeholder before there is one:
// utls asks for it to name the session ticket it looks for while the
// hello is built, before TCP is up (carrierTickets ignores the name).
func (a *abortConn) RemoteAddr() net.Addr {
	if a.Conn == nil {
		return &net.TCPAddr{}
	}
	return a.Conn.RemoteAddr()
}

// Write is called by utls for its records. Once the check has failed, the
// only records left are the ChangeCipherSpec and the alert.
func (a *abortConn) Write(p []byte) (int, error) {
	suite := uint16(a.suite.Load())
	if suite == 0 {
		return a.Conn.Write(p)
	}
	a.mu.Lock()
	secret := a.secret
	a.mu.Unlock()
	out, err := replaceAlert(p, suite, secret)
	if err != nil {
		// Send nothing rather than what Chromium would not send.
		return 0, err
	}
	if _, err := a.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// failed records that the check failed in a handshake of suite.
func (a *abortConn) failed(suite uint16) {
	a.suite.Store(uint32(suite))
}

// keyLog is utls's KeyLogWriter for the handshake: it keeps the client's
// handshake traffic secret, for the abort, and its application traffic
// secret, for sealingConn (utls writes each secret in one call, as
// "LABEL CLIENTRANDOM SECRET\n" in hex), and nothing else.
func (a *abortConn) keyLog() keyLogFunc {
	return func(line []byte) {
		label, secret, ok := parseKeyLogLine(line)
		if !ok {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		switch label {
		case "CLIENT_HANDSHAKE_TRAFFIC_SECRET":
			a.secret = secret
		case clientTrafficSecret:
			a.traffic = secret
		}
	}
}

// trafficSecret returns the client's application traffic secret, nil
// before utls logged it.
func (a *abortConn) trafficSecret() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.traffic
}

type keyLogFunc func([]byte)

func (f keyLogFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// replaceAlert returns p, records written by utls after a failed check,
// with each encrypted record (utls's alert, the first record of the
// client's handshake epoch) replaced by an encrypted fatal
// certificate_unknown alert; other records (the ChangeCipherSpec) pass.
func replaceAlert(p []byte, suite uint16, secret []byte) ([]byte, error) {
	var out []byte
	for len(p) > 0 {
		if len(p) < 5 {
			return nil, errors.New("transport: partial TLS record after a failed certificate check")
		}
		n := 5 + int(binary.BigEndian.Uint16(p[3:5]))
		if len(p) < n {
			return nil, errors.New("transport: partial TLS record after a failed certificate check")
		}
		rec := p[:n]
		p = p[n:]
		if rec[0] != 23 { // not application_data: the ChangeCipherSpec
			out = append(out, rec...)
			continue
		}
		alert, err := sealAlert(suite, secret, alertCertificateUnknown)
		if err != nil {
			return nil, err
		}
		out = append(out, alert...)
	}
	return out, nil
}

// sealAlert returns a TLS 1.3 record holding a fatal alert, encrypted
// under the handshake traffic secret as the first record of its epoch
// (sequence number 0), with no padding, as BoringSSL writes it (RFC 8446
// §5.2, key schedule §7.3).
func sealAlert(suite uint16, secret []byte, desc byte) ([]byte, error) {
	if len(secret) == 0 {
		return nil, errors.New("transport: no handshake secret to encrypt the alert")
	}
	s, err := newRecordSealer(suite, secret)
	if err != nil {
		return nil, err
	}
	return s.seal(nil, []byte{2, desc}, recordTypeAlert), nil // fatal, desc
}

// expandLabel is TLS 1.3's HKDF-Expand-Label with an empty context.
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0) // empty context
	return hkdf.Expand(h, secret, string(info), n)
}
