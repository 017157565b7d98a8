package transport

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"

	"github.com/mirage-pt/mirage/transport/link"
)

// BrowserRequest makes one HTTPS request to addr as the browser of
// fingerprint p.Fingerprint (a link's fp=) would: TCP, then TLS opened with
// that browser's ClientHello for p.ServerName (none for an empty name, as
// for an address typed in), then HTTP/2 if the server picks it, as
// browsers offer it first, else HTTP/1.1. The certificate is checked as a
// tunnel's is (it must match p.Pin, or chain to roots for p.ServerName; nil
// roots are the system's), and a handshake that fails the check is aborted
// as the browser aborts it, so that a tool never finishes a handshake the
// browser it imitates would not. It is for tools that talk to a bridge's
// face (mirage-client check reading the site's clock), which must not
// stand out from the browser the link imitates: no Go TLS hello, ever.
// The response body is read in full before it returns; dial nil means
// net.Dialer.
func BrowserRequest(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, p link.Params, roots *x509.CertPool, req *http.Request) (*http.Response, []byte, error) {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	} else {
		raw.SetDeadline(time.Now().Add(DefaultHandshakeTimeout))
	}
	ac := &abortConn{Conn: raw}
	ucfg := certCheck{serverName: p.ServerName, pin: p.Pin, roots: roots}.config(ac)
	uc, err := newUConn(ac, ucfg, p.Fingerprint)
	if err != nil {
		return nil, nil, err
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		if errors.Is(err, ErrCertificate) {
			ac.drain()
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("transport: TLS handshake: %w", err)
	}
	var resp *http.Response
	if uc.ConnectionState().NegotiatedProtocol == "h2" {
		cc, err := (&http2.Transport{}).NewClientConn(uc)
		if err != nil {
			return nil, nil, err
		}
		defer cc.Close()
		if resp, err = cc.RoundTrip(req); err != nil {
			return nil, nil, err
		}
	} else {
		if err := req.Write(uc); err != nil {
			return nil, nil, err
		}
		if resp, err = http.ReadResponse(bufio.NewReader(uc), req); err != nil {
			return nil, nil, err
		}
	}
	defer resp.Body.Close()
	var body []byte
	if req.Method != http.MethodHead {
		body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return resp, body, err
		}
	}
	return resp, body, nil
}
