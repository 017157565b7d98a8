package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

// faceOptions are the flags (or ServerTransportOptions) that choose what
// strangers meet.
type faceOptions struct {
	domain   string   // ACME certificate for this name
	acmeDir  string   // ACME directory URL; "" means Let's Encrypt
	acmeRoot string   // PEM file of roots the ACME server's HTTPS chains to; "" means the system's
	certFile string   // certificate files
	keyFile  string   //
	cover    string   // host:port of a site to borrow
	sni      []string // names clients send; the first goes into links
	upstream string   // reverse-proxy the site to this URL
	www      string   // serve this directory
}

// face is the result: exactly one of site and cover, the server names, and
// warnings for the operator.
type face struct {
	site     *transport.SiteFace
	cover    *transport.CoverFace
	names    []string
	warnings []string
	acme     *autocert.Manager // -domain: gets and renews the certificate
	domain   string
	// pin goes into links (pin=) when no browser would trust the site's
	// certificate: clients then accept it by its key, and abort, as a
	// browser does, on any other (an interceptor's).
	pin link.Pin
}

// autocertDir is the ACME cache in the state directory.
const autocertDir = "autocert"

// strongFaceAdvice is the one line that tells an operator running without
// a domain what a strong face needs. It is logged at every start of such a
// bridge, and under tor it goes to tor's log as well.
const strongFaceAdvice = "for a strong face give the bridge a domain name: -domain NAME " +
	"(domain=NAME in ServerTransportOptions under tor), with DNS for NAME pointing here and port 443 reaching this port; " +
	"the bridge then gets a free ACME certificate, and clients send NAME as browsers do"

func (o *faceOptions) check() error {
	n := 0
	for _, set := range []bool{o.domain != "", o.certFile != "" || o.keyFile != "", o.cover != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return errors.New("choose one face: -domain, -cert/-key, or -cover")
	}
	if (o.certFile == "") != (o.keyFile == "") {
		return errors.New("-cert and -key go together: give both files")
	}
	if o.cover != "" {
		if _, _, err := net.SplitHostPort(o.cover); err != nil {
			return fmt.Errorf("-cover %q: want host:port, e.g. www.example.com:443", o.cover)
		}
		if o.upstream != "" || o.www != "" {
			return errors.New("-cover borrows another site: -upstream and -www do not apply")
		}
	}
	if o.upstream != "" && o.www != "" {
		return errors.New("choose one site content: -upstream or -www")
	}
	if (o.acmeDir != "" || o.acmeRoot != "") && o.domain == "" {
		return errors.New("-acme-directory and -acme-root choose where -domain gets its certificate: give -domain too")
	}
	if o.acmeDir != "" {
		// RFC 8555 §6.1: ACME runs over HTTPS only.
		if u, err := url.Parse(o.acmeDir); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("-acme-directory %q: want the https:// URL of an ACME directory, e.g. https://acme-v02.api.letsencrypt.org/directory", o.acmeDir)
		}
	}
	return nil
}

// buildFace makes the face the options describe. stateDir holds the ACME
// cache and the self-signed certificate; ip is the bridge's address, which
// a self-signed certificate names (nil when it is not known).
func buildFace(o faceOptions, stateDir string, ip net.IP) (*face, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	f := &face{}
	for _, n := range o.sni {
		f.names = append(f.names, strings.ToLower(n))
	}
	if o.cover != "" {
		host, _, _ := net.SplitHostPort(o.cover)
		if len(f.names) == 0 {
			if net.ParseIP(host) != nil {
				return nil, fmt.Errorf("-cover %s is an IP address: give -sni with the name clients should send", o.cover)
			}
			f.names = []string{host}
		}
		f.cover = &transport.CoverFace{Address: o.cover}
		f.warnings = append(f.warnings, "cover mode borrows "+o.cover+
			": the bridge's IP address does not belong to that site, which a careful censor can notice; a site face (-domain) is stronger")
		return f, nil
	}
	handler, err := siteHandler(o)
	if err != nil {
		return nil, err
	}
	var tlsConfig *tls.Config
	switch {
	case o.domain != "":
		m, err := acmeManager(o, stateDir)
		if err != nil {
			return nil, err
		}
		// TLSConfig answers TLS-ALPN-01 challenges on this same port.
		tlsConfig = m.TLSConfig()
		f.acme, f.domain = m, o.domain
		if len(f.names) == 0 {
			f.names = []string{o.domain}
		}
	case o.certFile != "":
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, fmt.Errorf("loading -cert %s and -key %s: %w", o.certFile, o.keyFile, err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		if len(f.names) == 0 {
			// The first exact name the certificate covers; a wildcard
			// is no name a client can send.
			if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
				for _, n := range leaf.DNSNames {
					if !strings.Contains(n, "*") {
						f.names = []string{strings.ToLower(n)}
						break
					}
				}
			}
			if len(f.names) == 0 {
				return nil, errors.New("the certificate names no exact DNS name: give -sni with the name clients should send")
			}
		}
		if f.pin, err = pinUnlessTrusted(cert, f.names[0]); err != nil {
			return nil, err
		}
	default:
		// No name of its own: the certificate names the bridge's
		// address, as a device reached by IP does, and clients send no
		// server name, as a browser does for an address typed as an IP.
		// A made-up name (older versions used "localhost") would be the
		// same on every such bridge, one DPI rule away from all of them.
		cert, legacy, err := loadOrCreateSelfSigned(stateDir, selfSigned{ip: ip, names: f.names})
		if err != nil {
			return nil, err
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		if f.pin, err = certPin(cert); err != nil {
			return nil, err
		}
		if len(f.names) == 0 {
			// The empty name is the hello without server_name;
			// only it is accepted, besides the legacy name below.
			f.names = []string{""}
			legacyPath := filepath.Join(stateDir, legacySNIFile)
			if legacy {
				note := legacySNI + "\n# This bridge handed out links with sni=" + legacySNI + " before; it keeps accepting them.\n" +
					"# Remove this file once every user has the new link.\n"
				if err := keys.WriteFileAtomic(legacyPath, []byte(note), 0o600); err != nil {
					return nil, err
				}
			}
			if _, err := os.Stat(legacyPath); err == nil {
				f.names = append(f.names, legacySNI)
				f.warnings = append(f.warnings, "links made by older versions of this bridge send the server name "+legacySNI+
					", which a censor can spot; they still work, but give users the new link (it sends none), then remove "+legacyPath)
			}
		}
		f.warnings = append(f.warnings, "the site face uses a self-signed certificate: anyone who probes the bridge can see that; "+strongFaceAdvice)
	}
	tlsConfig.NextProtos = append([]string{"h2", "http/1.1"}, tlsConfig.NextProtos...)
	f.site = &transport.SiteFace{TLSConfig: tlsConfig, Handler: handler}
	return f, nil
}

// certPin returns the pin of cert's leaf.
func certPin(cert tls.Certificate) (link.Pin, error) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return link.Pin{}, fmt.Errorf("site certificate: %w", err)
	}
	return link.SPKIPin(leaf.RawSubjectPublicKeyInfo), nil
}

// pinUnlessTrusted returns the pin of an operator's certificate (-cert)
// when its chain does not verify for name under the system's roots (a
// self-signed or private-CA certificate, which clients could not accept
// otherwise), and no pin when it does: a CA's certificate is renewed with
// new keys, and a pin would then lock out every link handed out before.
func pinUnlessTrusted(cert tls.Certificate, name string) (link.Pin, error) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return link.Pin{}, fmt.Errorf("-cert: %w", err)
	}
	if name != "" {
		opts := x509.VerifyOptions{DNSName: name, Intermediates: x509.NewCertPool()}
		for _, der := range cert.Certificate[1:] {
			if ic, err := x509.ParseCertificate(der); err == nil {
				opts.Intermediates.AddCert(ic)
			}
		}
		if _, err := leaf.Verify(opts); err == nil {
			return link.Pin{}, nil
		}
	}
	return link.SPKIPin(leaf.RawSubjectPublicKeyInfo), nil
}

// acmeManager gets and renews the certificate for o.domain from Let's
// Encrypt, or from the ACME server at o.acmeDir, trusting o.acmeRoot for
// its HTTPS if given (a private or test CA).
func acmeManager(o faceOptions, stateDir string) (*autocert.Manager, error) {
	cacheDir := filepath.Join(stateDir, autocertDir)
	client := &acme.Client{DirectoryURL: autocert.DefaultACMEDirectory}
	if o.acmeDir != "" {
		client.DirectoryURL = o.acmeDir
		// Certificates from another CA go in a cache of their own: a
		// certificate from a test CA must not be served after the
		// operator switches to a real one.
		u, _ := url.Parse(o.acmeDir) // checked in check
		cacheDir += "-" + strings.NewReplacer(":", "_", "/", "_", "\\", "_").Replace(u.Host)
	}
	if o.acmeRoot != "" {
		pemBytes, err := os.ReadFile(o.acmeRoot)
		if err != nil {
			return nil, fmt.Errorf("-acme-root: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("-acme-root %s holds no PEM certificate: give the CA certificate the ACME server's HTTPS chains to", o.acmeRoot)
		}
		client.HTTPClient = &http.Client{
			Transport: &http.Transport{
				Proxy:               http.ProxyFromEnvironment,
				TLSClientConfig:     &tls.Config{RootCAs: roots},
				TLSHandshakeTimeout: 30 * time.Second,
			},
			// Bounds each ACME request; the whole order is bounded by
			// autocert (5 minutes per certificate).
			Timeout: time.Minute,
		}
	}
	return &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: autocert.HostWhitelist(o.domain),
		Cache:      autocert.DirCache(cacheDir),
		Client:     client,
	}, nil
}

// obtainCertificate asks for the -domain certificate as soon as the bridge
// listens, rather than when the first visitor arrives: a site whose first
// handshake stalls for seconds while a CA is asked would stand out to a
// prober who is that first visitor, and the operator learns at once whether
// ACME works. It returns once the certificate is there or the attempt
// failed (autocert tries again, a minute later, for the next visitor).
func (f *face) obtainCertificate(log *slog.Logger) {
	if f.acme == nil {
		return
	}
	// A hello as a current browser sends it, so that the certificate made
	// is the ECDSA one browsers and clients get (autocert keeps an RSA one
	// apart for old clients).
	cert, err := f.acme.GetCertificate(&tls.ClientHelloInfo{
		ServerName:        f.domain,
		CipherSuites:      []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519, tls.CurveP256},
		SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12},
	})
	if err != nil {
		log.Warn("could not get a certificate for "+f.domain+" yet; visitors meet a TLS error until one is issued. "+
			"Check that DNS for the name points at this bridge and that this port is what the name's port 443 reaches",
			"error", err.Error())
		return
	}
	expires := "unknown"
	if cert.Leaf != nil {
		expires = cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	log.Info("certificate ready", "name", f.domain, "expires", expires)
}

// siteHandler returns the site's content: a reverse proxy, a directory, or
// nothing (notFoundSite).
func siteHandler(o faceOptions) (http.Handler, error) {
	switch {
	case o.upstream != "":
		u, err := url.Parse(o.upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("-upstream %q: want an http:// or https:// URL, e.g. http://127.0.0.1:8080", o.upstream)
		}
		names := append([]string{}, o.sni...)
		if o.domain != "" {
			names = append([]string{o.domain}, names...)
		}
		return &httputil.ReverseProxy{
			Rewrite: func(r *httputil.ProxyRequest) {
				r.SetURL(u)
				r.Out.Host = pinnedHost(r.In.Host, names, u.Host)
				// No X-Forwarded-For: visitors' addresses stay here.
				// But the upstream must be able to tell a visitor from
				// a local request: this header says "from the
				// internet, address withheld" (RFC 7239).
				r.Out.Header.Set("Forwarded", `for="_hidden";proto=https`)
			},
			Transport: upstreamTransport(u),
			ErrorLog:  discardLog,
		}, nil
	case o.www != "":
		st, err := os.Stat(o.www)
		if err != nil || !st.IsDir() {
			return nil, fmt.Errorf("-www %q is not a directory", o.www)
		}
		return http.FileServer(staticDir{http.Dir(o.www)}), nil
	}
	return notFoundSite, nil
}

// pinnedHost is the Host the upstream sees: the visitor's, if it is one of
// the face's names; otherwise the face's first name, or, for a bridge
// without one, the upstream's own host. A prober choosing the Host (say
// "localhost", to reach a virtual host meant only for the machine itself)
// reaches nothing the face does not serve.
func pinnedHost(host string, names []string, upstream string) string {
	h := strings.ToLower(host)
	if hn, _, err := net.SplitHostPort(h); err == nil {
		h = hn
	}
	for _, n := range names {
		if h == strings.ToLower(n) {
			return host
		}
	}
	if len(names) > 0 {
		return names[0]
	}
	return upstream
}

// upstreamTransport dials the upstream. When the upstream is on IPv4
// loopback, the connection comes from 127.0.0.2, not 127.0.0.1, so that an
// upstream rule such as nginx's "allow 127.0.0.1" does not take the
// internet's visitors for the machine's own requests. (Apache's "Require
// local" takes all of 127.0.0.0/8 as local: such an upstream should match
// the Forwarded header instead, as the README says.)
func upstreamTransport(u *url.URL) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil && ip.IsLoopback() {
		d := &net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		t.DialContext = d.DialContext
	}
	return t
}

// staticDir is the -www directory as the site shows it: files, and
// directories that have an index.html, and nothing else. A directory listing
// would show a prober the whole tree, and dotfiles (.git, .env, .htpasswd)
// are what operators leave in a web root by mistake. Both answer exactly as
// a missing file does, so a prober cannot even tell that they exist.
type staticDir struct {
	dir http.Dir
}

func (d staticDir) Open(name string) (http.File, error) {
	// http.FileServer cleans name and starts it with "/"; every element is
	// checked, so a dot-directory hides everything under it.
	for _, elem := range strings.Split(name, "/") {
		if strings.HasPrefix(elem, ".") {
			return nil, os.ErrNotExist
		}
	}
	f, err := d.dir.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		// http.FileServer serves a directory's index.html and lists the
		// others: only the first kind is shown.
		index, err := d.dir.Open(strings.TrimSuffix(name, "/") + "/index.html")
		if err != nil {
			f.Close()
			return nil, os.ErrNotExist
		}
		index.Close()
	}
	return f, nil
}

// notFoundSite is the content of a bridge with none of its own: no page
// at all, every path answered with net/http's own "404 page not found",
// exactly as a Go HTTPS server with no handler for it answers (an API
// server, a Traefik or Kubernetes ingress default backend, an exporter
// asked for /), which is what the face's TLS and HTTP/2 stack already is.
// A built-in page would be one more thing the same on every such bridge,
// and a page made per bridge would still be made by one program, for a
// site no name points to. Operators who want a site give -upstream or
// -www (or -domain with either).
var notFoundSite = http.HandlerFunc(http.NotFound)
