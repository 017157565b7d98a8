package transport

import (
	"crypto"
	"crypto/tls"
	"errors"
	"sync"

	"github.com/mirage-pt/mirage/transport/auth"
)

// A site face's tunnels present a certificate bound to the client's auth
// key, as cover-mode tunnels do, in place of the site's own: a client
// that sees one knows, before its Finished, that the bridge took its
// hello for a client's and not a stranger's (which would have met the
// site), so it may send its first stream with its opening instead of a
// round trip later, after the proof (PROTOCOL.md §5, "Early data"). The
// certificate is encrypted, so only its length shows: the bound leaf is
// padded to the site leaf's exact length, carries the site's own public
// key (CertificateVerify is then signed by the same key as a stranger's,
// the same size and the same cost), and the site's intermediates, OCSP
// staple and SCTs follow as the site sends them. A site certificate that
// cannot be imitated that way (an Ed25519 key, a leaf shorter than the
// shortest bound one) is sent as it is, and its clients wait for the proof.
type siteTunnel struct {
	site *tls.Config // the site's own configuration, which strangers meet

	mu     sync.Mutex
	shapes map[string]*coverTLS // by site leaf DER; nil value: cannot imitate
}

// maxSiteShapes bounds siteTunnel's cache: a site has one certificate, or a
// few (names, renewals); past this many, the cache starts over.
const maxSiteShapes = 16

func newSiteTunnel(site *tls.Config) *siteTunnel {
	st := &siteTunnel{site: site, shapes: map[string]*coverTLS{}}
	// Fit the static certificates now, not on a client's first handshake.
	for i := range site.Certificates {
		st.shape(&site.Certificates[i])
	}
	return st
}

// config returns the TLS configuration of the tunnel of the client whose
// auth key is key.
func (st *siteTunnel) config(key [auth.KeyLen]byte) *tls.Config {
	if st.site.GetConfigForClient != nil {
		// The site picks its configuration per hello: which certificate
		// a stranger gets cannot be known here.
		return st.site
	}
	cfg := st.site.Clone()
	shareTickets(cfg, st.site)
	cfg.Certificates = nil // so that GetCertificate is always asked
	cfg.GetCertificate = func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
		sc, err := siteCertificateFor(st.site, chi)
		if err != nil {
			return nil, err
		}
		ct := st.shape(sc)
		if ct == nil {
			return sc, nil
		}
		bound, err := ct.certificate(key)
		if err != nil {
			return sc, nil
		}
		bound.OCSPStaple, bound.SignedCertificateTimestamps = sc.OCSPStaple, sc.SignedCertificateTimestamps
		return &bound, nil
	}
	return cfg
}

// shareTickets makes c seal and open session tickets under the keys of
// site, the configuration the face and every tunnel are cloned from. A
// clone made before site's first ticket makes keys of its own, and each
// turns its keys over daily on its own, so tickets sealed by one were
// opened by no other: no carrier could resume the session of another
// (tickets.go), and the face refused every client's ticket, so a censor
// replaying a client's resuming hello met a full handshake where a
// website, with one key set, resumes. A configuration with its own
// ticket handling keeps it (the face and tunnels then share it, cloned).
func shareTickets(c, site *tls.Config) {
	if c.WrapSession != nil || c.UnwrapSession != nil {
		return
	}
	c.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		return site.EncryptTicket(cs, ss)
	}
	c.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		return site.DecryptTicket(identity, cs)
	}
}

// shape returns how to imitate sc (nil: it cannot be).
func (st *siteTunnel) shape(sc *tls.Certificate) *coverTLS {
	if len(sc.Certificate) == 0 {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if ct, ok := st.shapes[string(sc.Certificate[0])]; ok {
		return ct
	}
	ct := siteShape(sc)
	if len(st.shapes) >= maxSiteShapes {
		clear(st.shapes)
	}
	st.shapes[string(sc.Certificate[0])] = ct
	return ct
}

// siteShape fits a bound leaf with sc's key to sc's leaf's length.
func siteShape(sc *tls.Certificate) *coverTLS {
	signer, ok := sc.PrivateKey.(crypto.Signer)
	if !ok {
		return nil
	}
	if _, err := specOf(signer.Public()); err != nil {
		return nil
	}
	ct := &coverTLS{chain: sc.Certificate, signer: signer}
	ders := make([]int, len(sc.Certificate))
	for i, c := range sc.Certificate {
		ders[i] = len(c)
	}
	if err := ct.fit(go13CertificateRecord(ders)); err != nil || !ct.padded {
		return nil
	}
	return ct
}

var errNoSiteCertificate = errors.New("transport: the site face has no certificate")

// siteCertificateFor returns the certificate crypto/tls would send a
// stranger with hello chi under c (its Config.getCertificate, which is
// not exported).
func siteCertificateFor(c *tls.Config, chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c.GetCertificate != nil && (len(c.Certificates) == 0 || chi.ServerName != "") {
		cert, err := c.GetCertificate(chi)
		if cert != nil || err != nil {
			return cert, err
		}
	}
	switch len(c.Certificates) {
	case 0:
		return nil, errNoSiteCertificate
	case 1:
		return &c.Certificates[0], nil
	}
	for i := range c.Certificates {
		if chi.SupportsCertificate(&c.Certificates[i]) == nil {
			return &c.Certificates[i], nil
		}
	}
	return &c.Certificates[0], nil
}
