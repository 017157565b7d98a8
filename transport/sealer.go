package transport

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// A carrier's bulk writes cost three copies of every byte in crypto/tls's
// (and utls's) hands: the flusher's frames are copied into TLS's record
// buffer, sealed there, and copied again into countingConn's batch, which
// sends a whole write in one system call. A profile of the bridge sending
// one stream on loopback had those copies at 10% of its CPU, against 3%
// for a Go TLS relay, whose records go out one per system call.
//
// sealingConn removes two of them. Once TLS writes only full records (at
// once where dynamic record sizing is off, as on the client, which sends
// as Chromium does; after 128 KiB where it is on, as on the bridge, which
// answers as a Go server does), it seals the TLS 1.3 records itself, with
// the traffic secret TLS gave its key log, straight from the flusher's
// buffer into the one it sends. The records are the ones TLS would have
// written, byte for byte in their lengths, and TLS still reads the
// connection. So nothing on the wire changes, and the peer, any TLS 1.3
// implementation, cannot tell.
//
// The record sequence number is the one thing TLS does not say. The
// first record written after the handshake is kept (countingConn's
// capture) and opened with the first few sequence numbers; the one that
// opens it is that record's. From then on each write to countingConn is
// one record (crypto/tls and utls write each record in one call once the
// handshake is done), so the count of writes gives the number at the
// takeover. When anything does not check out (no secret, a cipher suite
// we do not know, a record that opens with no number tried), the carrier
// goes on writing through TLS, as before. Once the sealer writes, TLS
// cannot (countingConn.seal): anything it would still write (an alert,
// say) would reuse one of the sealer's nonces.

// recordSizeBoost is where Go's dynamic record sizing ends: from this many
// bytes sent, crypto/tls writes only full records (its
// recordSizeBoostThreshold).
const recordSizeBoost = 128 << 10

// tlsMaxPlaintext is the most content one TLS record carries.
const tlsMaxPlaintext = 1 << 14

const (
	recordTypeAlert           = 21
	recordTypeApplicationData = 23
)

// recordSealer seals TLS 1.3 records with one traffic key.
type recordSealer struct {
	aead cipher.AEAD
	iv   [12]byte
	seq  uint64 // of the next record
}

// newRecordSealer returns the sealer of the traffic secret of a TLS 1.3
// connection using suite (RFC 8446, section 7.3), at sequence number 0.
func newRecordSealer(suite uint16, secret []byte) (*recordSealer, error) {
	var (
		h      func() hash.Hash
		keyLen int
	)
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		h, keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		h, keyLen = sha512.New384, 32
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		h, keyLen = sha256.New, chacha20poly1305.KeySize
	default:
		return nil, fmt.Errorf("transport: cipher suite %#04x is not TLS 1.3's", suite)
	}
	if len(secret) != h().Size() {
		return nil, errors.New("transport: traffic secret of the wrong length")
	}
	key, err := expandLabel(h, secret, "key", keyLen)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(h, secret, "iv", 12)
	if err != nil {
		return nil, err
	}
	s := &recordSealer{}
	copy(s.iv[:], iv)
	if suite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		s.aead, err = chacha20poly1305.New(key)
		return s, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	s.aead, err = cipher.NewGCM(block)
	return s, err
}

// nonce returns the nonce of record seq.
func (s *recordSealer) nonce(seq uint64) [12]byte {
	n := s.iv
	for i := range 8 {
		n[4+i] ^= byte(seq >> (56 - 8*i))
	}
	return n
}

// header appends the header of a record holding n bytes of content.
func (s *recordSealer) header(dst []byte, n int) []byte {
	wire := n + 1 + s.aead.Overhead()
	return append(dst, recordTypeApplicationData, 3, 3, byte(wire>>8), byte(wire))
}

// seal appends to dst the records of content p of type typ, split as TLS
// splits a write: full records, then the rest. It copies p's bytes once,
// into dst, where they are sealed.
func (s *recordSealer) seal(dst, p []byte, typ byte) []byte {
	return s.sealRecords(dst, p, typ, false)
}

// sealOwned is seal for a p the caller lets it change while it runs (the
// flusher's own buffer): each record's content type goes, for the moment
// of its sealing, in the byte after the record's content, so the cipher
// reads p and writes dst in one pass, with no copy first. The byte is put
// back. The last record's content type needs room past len(p); without
// it, that record is copied first, as seal does.
func (s *recordSealer) sealOwned(dst, p []byte) []byte {
	return s.sealRecords(dst, p, recordTypeApplicationData, true)
}

func (s *recordSealer) sealRecords(dst, p []byte, typ byte, owned bool) []byte {
	for len(p) > 0 {
		m := min(len(p), tlsMaxPlaintext)
		dst = slices.Grow(dst, 5+m+1+s.aead.Overhead())
		dst = s.header(dst, m)
		ad := dst[len(dst)-5:]
		n := s.nonce(s.seq)
		s.seq++
		if owned && (m < len(p) || cap(p) > len(p)) {
			inner := p[:m+1]
			kept := inner[m]
			inner[m] = typ
			dst = s.aead.Seal(dst, n[:], inner, ad)
			inner[m] = kept
		} else {
			start := len(dst)
			dst = append(dst, p[:m]...)
			dst = append(dst, typ)
			inner := dst[start:]
			sealed := s.aead.Seal(inner[:0], n[:], inner, ad)
			dst = dst[:start+len(sealed)]
		}
		p = p[m:]
	}
	return dst
}

// findSeq returns the sequence number, among the first few from 0, that
// opens rec, one whole application data record of this key, and whether
// one did.
func (s *recordSealer) findSeq(rec []byte) (uint64, bool) {
	if len(rec) < 5+1+s.aead.Overhead() || rec[0] != recordTypeApplicationData ||
		int(rec[3])<<8|int(rec[4]) != len(rec)-5 {
		return 0, false
	}
	buf := make([]byte, 0, len(rec))
	// Records before the first we keep: on the bridge, the session
	// tickets a site's TLS sends with its Finished (Go sends one).
	for seq := range uint64(4) {
		n := s.nonce(seq)
		if _, err := s.aead.Open(buf[:0], n[:], rec[5:], rec[:5]); err == nil {
			return seq, true
		}
	}
	return 0, false
}

// trafficSecretLog is a TLS KeyLogWriter that keeps the secret of one
// label, and nothing else.
type trafficSecretLog struct {
	label string

	mu     sync.Mutex
	secret []byte
}

// The labels of the application traffic secrets in a key log.
const (
	clientTrafficSecret = "CLIENT_TRAFFIC_SECRET_0"
	serverTrafficSecret = "SERVER_TRAFFIC_SECRET_0"
)

// Write takes one key log line, as TLS writes each: "LABEL CLIENTRANDOM
// SECRET\n", in hex.
func (l *trafficSecretLog) Write(line []byte) (int, error) {
	if label, secret, ok := parseKeyLogLine(line); ok && label == l.label {
		l.mu.Lock()
		l.secret = secret
		l.mu.Unlock()
	}
	return len(line), nil
}

// get returns the secret, nil before TLS logged it.
func (l *trafficSecretLog) get() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.secret
}

// parseKeyLogLine splits a key log line into its label and secret.
func parseKeyLogLine(line []byte) (string, []byte, bool) {
	label, rest, _ := bytes.Cut(bytes.TrimSpace(line), []byte(" "))
	_, hexSecret, _ := bytes.Cut(rest, []byte(" "))
	secret, err := hex.DecodeString(string(hexSecret))
	if err != nil || len(secret) == 0 {
		return "", nil, false
	}
	return string(label), secret, true
}

// withKeyLog returns a copy of cfg that logs its keys to w, and has every
// configuration its GetConfigForClient picks log them there too.
func withKeyLog(cfg *tls.Config, w *trafficSecretLog) *tls.Config {
	cfg = cfg.Clone()
	cfg.KeyLogWriter = w
	if pick := cfg.GetConfigForClient; pick != nil {
		cfg.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := pick(chi)
			if c != nil {
				c = c.Clone()
				c.KeyLogWriter = w
			}
			return c, err
		}
	}
	return cfg
}

// sealingConn is a carrier's TLS connection: TLS reads it, and writes it
// until the sealer takes over (see the top of this file).
type sealingConn struct {
	net.Conn // the TLS connection
	raw      *countingConn
	fullFrom int64 // raw.written from which TLS writes full records only

	mu      sync.Mutex    // held while writing
	ready   *recordSealer // to take over, at seq once base records were written
	base    uint64
	sealer  *recordSealer // once taken over
	closing bool          // close_notify sent (by the sealer)
	taken   atomic.Bool   // sealer is set, for Close without mu
}

// newSealingConn returns tc (TLS over raw) as a carrier's connection that
// TLS writes until prepare gives it what it needs to write it itself.
func newSealingConn(tc net.Conn, raw *countingConn, fullFrom int64) *sealingConn {
	return &sealingConn{Conn: tc, raw: raw, fullFrom: fullFrom}
}

// writeFirst writes p, the first record after the handshake, through TLS,
// keeps it (countingConn.captureNext), and readies the takeover from it,
// the connection's cipher suite and its write traffic secret.
func (c *sealingConn) writeFirst(p []byte, suite uint16, secret []byte) error {
	c.raw.captureNext()
	if _, err := c.Write(p); err != nil {
		return err
	}
	rec, records := c.raw.takeCaptured()
	c.prepare(suite, secret, rec, records)
	return nil
}

// prepare readies the takeover from the connection's cipher suite, its
// write traffic secret and the first record it wrote after the handshake
// (countingConn.takeCaptured: the record and the count of records written
// with it). Without all of them, or if they do not agree, TLS goes on
// writing.
func (c *sealingConn) prepare(suite uint16, secret, rec []byte, records uint64) {
	if secret == nil || rec == nil {
		return
	}
	s, err := newRecordSealer(suite, secret)
	if err != nil {
		return
	}
	seq, ok := s.findSeq(rec)
	if !ok {
		return
	}
	s.seq = seq + 1
	c.mu.Lock()
	c.ready, c.base = s, records
	c.mu.Unlock()
}

// sealingLocked reports whether the sealer writes now: it takes over, if it is
// ready and TLS would write full records from here. Called with mu held.
func (c *sealingConn) sealingLocked() bool {
	if c.sealer != nil {
		return true
	}
	if c.ready == nil || c.raw.written.Load() < c.fullFrom {
		return false
	}
	// Every write to raw since the kept record was one record of TLS's.
	c.ready.seq += c.raw.seal() - c.base
	c.sealer, c.ready = c.ready, nil
	c.taken.Store(true)
	return true
}

// sealing reports whether the sealer has taken over.
func (c *sealingConn) sealing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sealer != nil
}

// Write writes p as TLS would.
func (c *sealingConn) Write(p []byte) (int, error) {
	return c.write(p, false)
}

// writeOwned is Write for a p that sealOwned may change while it runs:
// the flusher's. TLS's writes go in one system call (countingConn's
// batch); the sealer's are one already.
func (c *sealingConn) writeOwned(p []byte) (int, error) {
	return c.write(p, true)
}

func (c *sealingConn) write(p []byte, owned bool) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.sealingLocked() {
		if !owned {
			return c.Conn.Write(p)
		}
		c.raw.batch()
		n, err := c.Conn.Write(p)
		if ferr := c.raw.flush(); err == nil {
			err = ferr
		}
		return n, err
	}
	if c.closing {
		// As TLS after its close_notify.
		return 0, errWriteAfterClose
	}
	buf := writeBufs.Get().(*[]byte)
	out := (*buf)[:0]
	if owned {
		out = c.sealer.sealOwned(out, p)
	} else {
		out = c.sealer.seal(out, p, recordTypeApplicationData)
	}
	_, err := c.raw.writeSealed(out)
	putWriteBuf(buf, out)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

var errWriteAfterClose = errors.New("transport: write after close_notify")

// closeNotify sends TLS's close_notify alert, sealed, within 5 seconds, as
// crypto/tls sends it. Called with mu held, once the sealer writes.
func (c *sealingConn) closeNotifyLocked() error {
	if c.closing {
		return nil
	}
	c.closing = true
	c.raw.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer c.raw.SetWriteDeadline(time.Now())
	_, err := c.raw.writeSealed(c.sealer.seal(nil, []byte{1, 0}, recordTypeAlert)) // warning, close_notify
	return err
}

// CloseWrite sends close_notify, as TLS's CloseWrite does.
func (c *sealingConn) CloseWrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sealer == nil {
		// Nothing may follow TLS's close_notify: no takeover either.
		c.ready = nil
		cw, ok := c.Conn.(interface{ CloseWrite() error })
		if !ok {
			return errors.New("transport: TLS connection cannot half-close")
		}
		return cw.CloseWrite()
	}
	return c.closeNotifyLocked()
}

// Close closes the connection as TLS's Close does: with close_notify
// first, unless a write is in progress.
func (c *sealingConn) Close() error {
	if !c.mu.TryLock() {
		// A write in progress may wait on a peer that stopped
		// reading: close under it, as TLS does.
		if c.taken.Load() {
			return c.raw.Close()
		}
		return c.Conn.Close()
	}
	defer c.mu.Unlock()
	if c.sealer == nil {
		c.ready = nil
		return c.Conn.Close()
	}
	err := c.closeNotifyLocked()
	if cerr := c.raw.Close(); cerr != nil {
		return cerr
	}
	return err
}
