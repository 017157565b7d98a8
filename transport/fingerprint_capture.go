package transport

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/link"
)

// Browsers change their ClientHello every few releases, and a censor that
// scores hellos bans stale ones. The built-in hellos (chromeSpec,
// firefoxSpec) need a release to change; a CapturedHello does not: it is
// read from captures of a browser's first TLS record (the format of
// shared/fingerprints: one file per connection, the 5-byte record header
// and the ClientHello, as a recorder on loopback saves them; README.md says
// how to make them), turned into a utls ClientHelloSpec by utls's
// Fingerprinter, and used by every client of the process that names the
// fingerprint it replaces (UseCapturedHello).
//
// What a capture fixes and what varies per connection: everything in the
// hello is sent as captured except what a browser draws anew for each
// connection: the random, the session_id (which carries the tag), the key
// shares, GREASE values (signature_algorithms' included), and GREASE ECH's
// config_id, enc and payload. Several captures of one browser tell more
// than one can: the ECH payload lengths and cipher suites seen, and
// whether the browser shuffles its extensions (Chrome does, per
// connection); the client then draws from what the captures show. A
// Chromium hello is recognised as such from one capture too (shuffled,
// and ECH lengths from BoringSSL's four).
//
// A capture is refused when the client could not send it faithfully: no
// 32-byte session_id for the tag, no server_name (the client could not add
// one in the browser's place), a resumed session (pre_shared_key,
// early_data), no TLS 1.3, or no x25519 key share for the tag's key.

// maxCaptureFile bounds what LoadCapturedHello reads of one file: a
// ClientHello is at most 64 KiB, in records of at most 16 KiB each.
const maxCaptureFile = hello.MaxHelloLen + 8*hello.RecordHeaderLen

// CapturedHello is a browser's ClientHello learned from captures, ready to
// be sent by clients in place of a built-in fingerprint. It is immutable
// and safe for concurrent use.
type CapturedHello struct {
	// record is the first capture as one TLS record: the template every
	// connection's spec is parsed from anew (utls's ApplyPreset writes
	// into the spec it is given, so specs are never shared).
	record []byte
	// shuffle: the captures' extension orders differ (or the capture is
	// Chromium's), so the client shuffles its own as the browser does.
	shuffle bool
	// echSuites and echLens are the GREASE ECH cipher suites and payload
	// lengths (before the AEAD tag) the captures show; nil without ECH.
	echSuites []utls.HPKESymmetricCipherSuite
	echLens   []uint16
	// shareX25519: the x25519 share repeats the X25519MLKEM768 share's
	// x25519 half (Firefox, Go), rather than being a key of its own
	// (Chrome).
	shareX25519 bool
	// echKeyPair: the GREASE ECH enc is a fresh key pair's public key,
	// not random bytes (greaseECHEncs). So for BoringSSL's GREASE ECH
	// (Chromium), if every capture's enc is a point of the curve.
	echKeyPair bool
}

// LoadCapturedHello reads captures from path: one capture file, or a
// directory whose *.bin files are all captures of one browser (as
// shared/fingerprints/chromium-156 is).
func LoadCapturedHello(path string) (*CapturedHello, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("transport: captured hello: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		files, err = filepath.Glob(filepath.Join(path, "*.bin"))
		if err != nil {
			return nil, fmt.Errorf("transport: captured hello: %w", err)
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("transport: captured hello: no *.bin files in %s", path)
		}
		sort.Strings(files)
	}
	var captures [][]byte
	for _, name := range files {
		b, err := readCapture(name)
		if err != nil {
			return nil, err
		}
		captures = append(captures, b)
	}
	h, err := ParseCapturedHello(captures...)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return h, nil
}

func readCapture(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("transport: captured hello: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxCaptureFile+1)); err != nil {
		return nil, fmt.Errorf("transport: captured hello: %w", err)
	}
	if buf.Len() > maxCaptureFile {
		return nil, fmt.Errorf("transport: captured hello %s: larger than a ClientHello can be", name)
	}
	return buf.Bytes(), nil
}

// ParseCapturedHello learns a browser's ClientHello from one or more
// captures of its first TLS record (record header and ClientHello; a hello
// split over several records is accepted too). Several captures must be of
// one browser and version: they may differ only where a browser varies
// per connection.
func ParseCapturedHello(captures ...[]byte) (*CapturedHello, error) {
	if len(captures) == 0 {
		return nil, errors.New("transport: captured hello: no captures")
	}
	h := &CapturedHello{}
	var first []string // the first capture's extensions, canonical, sorted
	var firstOrder, firstSummary string
	encsOnCurve := false // every capture's GREASE ECH enc is a point of the curve
	for i, c := range captures {
		msg, ch, err := parseCaptureBytes(c)
		if err != nil {
			return nil, fmt.Errorf("transport: captured hello %d: %w", i+1, err)
		}
		if len(msg) > hello.MaxRecordPayload {
			// Browsers' hellos are a few KiB. The client's own grows
			// past the capture (its server name; another capture's ECH
			// payload length): bounded so, it stays within what a
			// bridge reads, and in one record. A hello near 64 KiB
			// made one over it, which the bridge took for a stranger's.
			return nil, fmt.Errorf("transport: captured hello %d is %d bytes, more than a browser's hello (at most %d): capture a browser's first visit", i+1, len(msg), hello.MaxRecordPayload)
		}
		if err := checkCapture(ch); err != nil {
			return nil, fmt.Errorf("transport: captured hello %d: %w", i+1, err)
		}
		canon, ech, err := canonicalExtensions(ch)
		if err != nil {
			return nil, fmt.Errorf("transport: captured hello %d: %w", i+1, err)
		}
		order, sum := strings.Join(canon, " "), summary(ch)
		sorted := slices.Sorted(slices.Values(canon))
		if i == 0 {
			// One record, whatever the capture's record boundaries were:
			// utls's Fingerprinter reads exactly one (its length field
			// is not checked, so a hello of up to 64 KiB fits).
			h.record = append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
			h.shareX25519 = sharesX25519(ch)
			first, firstOrder, firstSummary = sorted, order, sum
		} else {
			if !slices.Equal(sorted, first) || sum != firstSummary {
				return nil, fmt.Errorf("transport: captured hello %d is not of the same browser as the first: %s",
					i+1, firstDifference(first, sorted))
			}
			if sharesX25519(ch) != h.shareX25519 {
				return nil, fmt.Errorf("transport: captured hello %d is not of the same browser as the first: key shares differ", i+1)
			}
			if order != firstOrder {
				h.shuffle = true
			}
		}
		if ech != nil {
			if i == 0 {
				encsOnCurve = true
			}
			encsOnCurve = encsOnCurve && len(ech.enc) == x25519EncLen && onCurve25519(ech.enc)
			if !slices.Contains(h.echSuites, ech.suite) {
				h.echSuites = append(h.echSuites, ech.suite)
			}
			if !slices.Contains(h.echLens, ech.payloadLen) {
				h.echLens = append(h.echLens, ech.payloadLen)
			}
		}
	}
	h.echKeyPair = encsOnCurve && boringECHLens(h.echLens)
	if boringECHLens(h.echLens) {
		// BoringSSL (Chrome) draws its GREASE ECH payload length from
		// 128, 160, 192 and 224 bytes; eight captures miss one of the
		// four four times in ten, and a client that never sent it
		// would differ from Chrome. So lengths that are all of the
		// four stand for all four.
		h.echLens = slices.Clone(boringECHPayloadLens)
	}
	if !h.shuffle && boringECHLens(h.echLens) &&
		slices.ContainsFunc(first, func(e string) bool { return strings.HasPrefix(e, "grease=") }) {
		// One capture cannot show its order varying, but GREASE
		// extensions with a GREASE ECH of BoringSSL's lengths are
		// Chromium's (Chrome, Edge, Cronet), which has shuffled its
		// extensions on every connection since version 106. Sent in
		// one order, such a hello would be unlike any real one.
		h.shuffle = true
	}
	// Build one hello now, so that a capture the client cannot send fails
	// here, where its file is named, and not on every dial.
	uc := utls.UClient(nil, &utls.Config{ServerName: "example.com", InsecureSkipVerify: true}, utls.HelloCustom)
	if err := h.apply(uc); err != nil {
		return nil, err
	}
	if err := uc.BuildHandshakeState(); err != nil {
		return nil, fmt.Errorf("transport: captured hello: utls cannot build it: %w", err)
	}
	if _, err := x25519Share(&uc.HandshakeState); err != nil {
		return nil, fmt.Errorf("transport: captured hello: %w", err)
	}
	return h, nil
}

// Spec returns a fresh utls ClientHelloSpec of the captured hello, with
// this connection's extension order (shuffled if the captures show the
// browser shuffles), GREASE signature algorithm and ECH choices drawn.
// A spec is for one connection: utls's ApplyPreset writes into it.
func (h *CapturedHello) Spec() (*utls.ClientHelloSpec, error) {
	f := utls.Fingerprinter{
		// Extensions utls does not know (Chrome's trust_anchors
		// 0xca34, say) are sent with the captured bytes: the browser
		// sends the same bytes on every connection. An extension
		// whose body a browser varied per connection would be
		// replayed; none of today's browsers has one.
		AllowBluntMimicry: true,
	}
	spec, err := f.FingerprintClientHello(h.record)
	if err != nil {
		return nil, fmt.Errorf("transport: captured hello: %w", err)
	}
	for _, ext := range spec.Extensions {
		switch e := ext.(type) {
		case *utls.SignatureAlgorithmsExtension:
			// utls re-draws GREASE in ciphers, groups, shares, versions
			// and extensions, but not here (Chrome 156 put one here).
			for i, s := range e.SupportedSignatureAlgorithms {
				if isGREASEValue(uint16(s)) {
					g, err := randomGREASE()
					if err != nil {
						return nil, err
					}
					e.SupportedSignatureAlgorithms[i] = utls.SignatureScheme(g)
				}
			}
		case *utls.GREASEEncryptedClientHelloExtension:
			e.CandidateCipherSuites = slices.Clone(h.echSuites)
			e.CandidatePayloadLens = slices.Clone(h.echLens)
		case *utls.UtlsPaddingExtension:
			// The Fingerprinter pads to the captured length; with
			// another server name, BoringSSL (Chrome, and Apple's
			// stack) pads by its own rule instead.
			e.GetPaddingLen = utls.BoringPaddingStyle
		}
	}
	if h.shuffle {
		shuffleExtensions(spec.Extensions)
	}
	return spec, nil
}

// apply makes uc send the captured hello.
func (h *CapturedHello) apply(uc *utls.UConn) error {
	spec, err := h.Spec()
	if err != nil {
		return err
	}
	if err := greaseECHEncs(spec, h.echKeyPair); err != nil {
		return err
	}
	if err := uc.ApplyPreset(spec); err != nil {
		return fmt.Errorf("transport: applying the captured ClientHello: %w", err)
	}
	if h.shareX25519 {
		return firefoxShareX25519(uc)
	}
	return nil
}

// shuffleExtensions permutes exts as Chrome does (BoringSSL's extension
// permutation): every extension moves except the GREASE ones, which stay
// first and last, and padding (pre_shared_key, which must stay last, is
// never in a capture the client accepts).
func shuffleExtensions(exts []utls.TLSExtension) {
	var movable []int
	for i, e := range exts {
		switch e.(type) {
		case *utls.UtlsGREASEExtension, *utls.UtlsPaddingExtension, utls.PreSharedKeyExtension:
		default:
			movable = append(movable, i)
		}
	}
	// math/rand/v2's global source is ChaCha8, seeded by the runtime
	// from the system's randomness: not predictable from outside.
	mrand.Shuffle(len(movable), func(i, j int) {
		exts[movable[i]], exts[movable[j]] = exts[movable[j]], exts[movable[i]]
	})
}

func isGREASEValue(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }

// randomGREASE draws a GREASE value (RFC 8701: 0x?a?a).
func randomGREASE() (uint16, error) {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	v := uint16(b[0]&0xf0 | 0x0a)
	return v<<8 | v, nil
}

// parseCaptureBytes reads one capture: TLS records holding one
// ClientHello and nothing after it.
func parseCaptureBytes(c []byte) ([]byte, *hello.ClientHello, error) {
	r := bytes.NewReader(c)
	_, msg, err := hello.ReadClientHello(r)
	if err != nil {
		return nil, nil, err
	}
	if r.Len() != 0 {
		return nil, nil, fmt.Errorf("%d bytes after the ClientHello (a capture holds the first record(s) of one connection)", r.Len())
	}
	ch, err := hello.Parse(msg)
	if err != nil {
		return nil, nil, err
	}
	return msg, ch, nil
}

// checkCapture refuses hellos the client could not send as captured.
func checkCapture(ch *hello.ClientHello) error {
	if len(ch.SessionID) != 32 {
		return fmt.Errorf("session_id is %d bytes, not 32: the tag needs all 32", len(ch.SessionID))
	}
	has := func(typ uint16) bool {
		return slices.ContainsFunc(ch.Extensions, func(e hello.Extension) bool { return e.Type == typ })
	}
	if !has(0x0000) {
		return errors.New("no server_name: capture a visit to a DNS name (the client leaves the name out itself when it has none)")
	}
	if has(0x0029) || has(0x002a) {
		return errors.New("a resumed connection (pre_shared_key or early_data): capture a first visit, with a fresh profile")
	}
	if !slices.Contains(ch.SupportedVersions, 0x0304) {
		return errors.New("does not offer TLS 1.3")
	}
	if _, ok := ch.KeyShare(0x001d); !ok {
		return errors.New("no x25519 key share, which the tag's key comes from")
	}
	return nil
}

// sharesX25519 reports whether the hello's x25519 share is the x25519
// half of its X25519MLKEM768 share.
func sharesX25519(ch *hello.ClientHello) bool {
	hybrid, ok1 := ch.KeyShare(0x11ec)
	x, ok2 := ch.KeyShare(0x001d)
	return ok1 && ok2 && len(x) == 32 && bytes.HasSuffix(hybrid, x)
}

// echChoice is what one capture's GREASE ECH extension chose.
type echChoice struct {
	suite      utls.HPKESymmetricCipherSuite
	payloadLen uint16 // before the AEAD tag
	enc        []byte
}

// canonicalExtensions describes each extension of ch as text with what
// varies per connection left out (GREASE values, key shares, the server
// name, ECH's random fields, cipher suite and length): two captures of
// one browser describe the same extensions, and differ only in order if
// the browser shuffles.
func canonicalExtensions(ch *hello.ClientHello) ([]string, *echChoice, error) {
	grease := func(v uint16) string {
		if isGREASEValue(v) {
			return "grease"
		}
		return fmt.Sprintf("%04x", v)
	}
	list := func(b []byte, lenBytes int) string {
		var s []string
		for i := lenBytes; i+1 < len(b); i += 2 {
			s = append(s, grease(binary.BigEndian.Uint16(b[i:])))
		}
		return strings.Join(s, ",")
	}
	var out []string
	var ech *echChoice
	for _, e := range ch.Extensions {
		var body string
		switch {
		case isGREASEValue(e.Type):
			body = fmt.Sprintf("%x", e.Data)
		case e.Type == 0x0000: // server_name: the client's own
		case e.Type == 0x000a, e.Type == 0x000d: // groups, sigalgs
			body = list(e.Data, 2)
		case e.Type == 0x002b: // supported_versions
			body = list(e.Data, 1)
		case e.Type == 0x0033: // key_share: groups and lengths
			var s []string
			for _, ks := range ch.KeyShares {
				if isGREASEValue(ks.Group) {
					s = append(s, fmt.Sprintf("grease:%x", ks.Data))
				} else {
					s = append(s, fmt.Sprintf("%04x:%d", ks.Group, len(ks.Data)))
				}
			}
			body = strings.Join(s, ",")
		case e.Type == 0xfe0d: // encrypted_client_hello
			c, err := parseGREASEECH(e.Data)
			if err != nil {
				return nil, nil, err
			}
			ech = c
			body = fmt.Sprintf("kdf %04x", c.suite.KdfId)
		default:
			body = fmt.Sprintf("%x", e.Data)
		}
		out = append(out, grease(e.Type)+"="+body)
	}
	return out, ech, nil
}

// parseGREASEECH reads an outer ECHClientHello: type(1) kdf(2) aead(2)
// config_id(1) enc<0..2^16-1> payload<1..2^16-1>. A browser without an
// ECH config for the site sends it as GREASE: every field is random.
func parseGREASEECH(d []byte) (*echChoice, error) {
	bad := fmt.Errorf("malformed encrypted_client_hello %x", d)
	if len(d) < 8 || d[0] != 0 {
		return nil, bad
	}
	c := &echChoice{suite: utls.HPKESymmetricCipherSuite{
		KdfId:  binary.BigEndian.Uint16(d[1:]),
		AeadId: binary.BigEndian.Uint16(d[3:]),
	}}
	// The suites HPKE defines (RFC 9180 §7.2, §7.3), which utls can
	// send: it panics building a payload for an AEAD it has no tag
	// length for. utls checks the first capture's; this checks every
	// capture's, since any one's suite may be drawn.
	switch c.suite.KdfId {
	case 1, 2, 3: // HKDF-SHA256, -SHA384, -SHA512
	default:
		return nil, fmt.Errorf("encrypted_client_hello names HPKE KDF %d, which no browser sends", c.suite.KdfId)
	}
	switch c.suite.AeadId {
	case 1, 2, 3: // AES-128-GCM, AES-256-GCM, ChaCha20Poly1305
	default:
		return nil, fmt.Errorf("encrypted_client_hello names HPKE AEAD %d, which no browser sends", c.suite.AeadId)
	}
	encLen := int(binary.BigEndian.Uint16(d[6:]))
	if len(d) < 8+encLen+2 {
		return nil, bad
	}
	n := int(binary.BigEndian.Uint16(d[8+encLen:]))
	if len(d) != 8+encLen+2+n || n < 16 {
		return nil, bad
	}
	c.payloadLen = uint16(n - 16) // every HPKE AEAD's tag is 16 bytes
	c.enc = d[8 : 8+encLen]
	return c, nil
}

// boringECHPayloadLens are the GREASE ECH payload lengths (before the
// AEAD tag) BoringSSL draws from: 32 × a random number from 4 to 7.
var boringECHPayloadLens = []uint16{128, 160, 192, 224}

// boringECHLens reports whether lens are all BoringSSL GREASE ECH lengths.
func boringECHLens(lens []uint16) bool {
	if len(lens) == 0 {
		return false
	}
	for _, n := range lens {
		if !slices.Contains(boringECHPayloadLens, n) {
			return false
		}
	}
	return true
}

// summary is what of a hello outside its extensions must agree across
// captures of one browser.
func summary(ch *hello.ClientHello) string {
	var cs []string
	for _, s := range ch.CipherSuites {
		if isGREASEValue(s) {
			cs = append(cs, "grease")
		} else {
			cs = append(cs, fmt.Sprintf("%04x", s))
		}
	}
	return fmt.Sprintf("version %04x, ciphers %s, compression %x",
		ch.LegacyVersion, strings.Join(cs, ","), ch.CompressionMethods)
}

// firstDifference names an extension in which two canonical lists differ.
func firstDifference(a, b []string) string {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return "the first has " + x
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			return "it has " + x
		}
	}
	return "their legacy versions, cipher suites or compression methods differ"
}

// Captured hellos in use, by fingerprint name (UseCapturedHello).
var (
	capturedMu sync.RWMutex
	captured   = map[string]*CapturedHello{}
)

// UseCapturedHello makes every client in this process whose fingerprint
// is fp (a name in link.Fingerprints; "" means link.DefaultFingerprint)
// send h's ClientHello instead of the built-in one; nil restores the
// built-in. A capture for "chrome" also serves edge, ios and safari, which
// are Chrome's hello unless a capture of their own is set (see newUConn).
//
// It is meant to be called once at start, from a file the user or
// operator keeps current (LoadCapturedHello): a refreshed browser then
// needs a new capture, not a new release. Links keep naming a browser,
// not a file: a link is shared between people and machines, and the
// capture that is current is each client's to keep.
func UseCapturedHello(fp string, h *CapturedHello) error {
	if fp == "" {
		fp = link.DefaultFingerprint
	}
	if !slices.Contains(link.Fingerprints, fp) {
		return fmt.Errorf("transport: unknown fingerprint %q (one of %s)", fp, strings.Join(link.Fingerprints, ", "))
	}
	capturedMu.Lock()
	defer capturedMu.Unlock()
	if h == nil {
		delete(captured, fp)
	} else {
		captured[fp] = h
	}
	return nil
}

func capturedFor(fp string) *CapturedHello {
	capturedMu.RLock()
	defer capturedMu.RUnlock()
	return captured[fp]
}
