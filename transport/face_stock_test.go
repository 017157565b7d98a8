package transport

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// h2Opening dials addr with TLS and ALPN h2, sends the opening Chromium
// sends (preface, SETTINGS, WINDOW_UPDATE), and returns the server's
// frames up to its SETTINGS ACK and until it falls silent, each described
// as text and sorted: what anyone who opens an HTTP/2 connection to the
// site learns of it.
func h2Opening(t *testing.T, addr string) []string {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		ServerName:         testSNI,
		InsecureSkipVerify: true,
		NextProtos:         []string{"h2", "http/1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	frame := func(typ, flags byte, stream uint32, payload []byte) []byte {
		b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
		b = binary.BigEndian.AppendUint32(b, stream)
		return append(b, payload...)
	}
	var settings []byte
	for _, s := range [][2]uint32{{1, 65536}, {2, 0}, {4, 6291456}, {6, 262144}} { // Chromium's
		settings = binary.BigEndian.AppendUint16(settings, uint16(s[0]))
		settings = binary.BigEndian.AppendUint32(settings, s[1])
	}
	out := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	out = append(out, frame(0x4, 0, 0, settings)...)
	out = append(out, frame(0x8, 0, 0, binary.BigEndian.AppendUint32(nil, 15663105))...)
	if _, err := conn.Write(out); err != nil {
		t.Fatal(err)
	}
	// Go's server queues its SETTINGS and WINDOW_UPDATE before it reads
	// the client's SETTINGS, yet the ACK sometimes overtakes the
	// WINDOW_UPDATE (stock Go does this too): so read until the ACK and
	// then until the server falls silent, and return the frames sorted.
	var got []string
	acked := false
	for len(got) < 16 {
		if acked {
			conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		}
		var h [9]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() && acked {
				slices.Sort(got)
				return got
			}
			t.Fatalf("after %q: %v", got, err)
		}
		n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		payload := make([]byte, n)
		if _, err := io.ReadFull(conn, payload); err != nil {
			t.Fatal(err)
		}
		typ, flags, stream := h[3], h[4], binary.BigEndian.Uint32(h[5:])&0x7fffffff
		switch {
		case typ == 0x4 && flags&0x1 != 0:
			acked = true
			got = append(got, "SETTINGS ACK")
		case typ == 0x4:
			s := "SETTINGS"
			for i := 0; i+6 <= n; i += 6 {
				s += fmt.Sprintf(" %#x=%d", binary.BigEndian.Uint16(payload[i:]), binary.BigEndian.Uint32(payload[i+2:]))
			}
			got = append(got, s)
		case typ == 0x8 && n == 4:
			got = append(got, fmt.Sprintf("WINDOW_UPDATE stream %d +%d", stream, binary.BigEndian.Uint32(payload)))
		default:
			got = append(got, fmt.Sprintf("frame type %d flags %#x stream %d length %d", typ, flags, stream, n))
		}
	}
	t.Fatalf("the server's opening does not end: %q", got)
	return nil
}

// TestSiteFaceHTTP2OpeningIsStock proves that a bridge's site face, as a
// bridge operator gets it (SiteFace.Server nil), opens HTTP/2 exactly as a
// stock Go HTTPS server with the same TLS configuration does: the same
// SETTINGS (MAX_HEADER_LIST_SIZE included), WINDOW_UPDATE and ACK. Before,
// the face announced MAX_HEADER_LIST_SIZE 65856 where stock Go announces
// 1048896, which one connection to any bridge revealed.
func TestSiteFaceHTTP2OpeningIsStock(t *testing.T) {
	tlsConfig := func() *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{siteCertificate(t)}}
	}
	b := startBridge(t, &SiteFace{TLSConfig: tlsConfig(), Handler: siteHandler}, echoHandler, nil)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stock := &http.Server{Handler: siteHandler, TLSConfig: tlsConfig()}
	go stock.ServeTLS(ln, "", "")
	t.Cleanup(func() { stock.Close() })

	want := h2Opening(t, ln.Addr().String())
	got := h2Opening(t, b.addr)
	if !slices.Equal(got, want) {
		t.Fatalf("the face opens HTTP/2 with\n\t%q\na stock Go server with\n\t%q", got, want)
	}
	t.Logf("both: %q", got)
}

// TestNewSiteServerIsStock proves the face's default http.Server has
// net/http's defaults for everything a peer can observe: no timeouts of
// its own (the old 20 s header and 120 s idle timeouts were the same on
// every bridge, so timing one idle connection told a bridge apart) and the
// default header limit.
func TestNewSiteServerIsStock(t *testing.T) {
	s := NewSiteServer(siteHandler, &tls.Config{})
	if s.ReadTimeout != 0 || s.ReadHeaderTimeout != 0 || s.WriteTimeout != 0 || s.IdleTimeout != 0 {
		t.Errorf("timeouts read %v, header %v, write %v, idle %v; stock net/http has none",
			s.ReadTimeout, s.ReadHeaderTimeout, s.WriteTimeout, s.IdleTimeout)
	}
	if s.MaxHeaderBytes != 0 || s.HTTP2 != nil || s.Protocols != nil || s.TLSNextProto != nil ||
		s.ConnState != nil || s.ConnContext != nil || s.BaseContext != nil || s.DisableGeneralOptionsHandler {
		t.Errorf("NewSiteServer sets more than Handler, TLSConfig and ErrorLog: %+v", s)
	}
}

// TestSiteFaceKeepsOperatorSettings proves what an operator configures in
// SiteFace.Server reaches the wire: here a header limit, which HTTP/2
// announces in SETTINGS.
func TestSiteFaceKeepsOperatorSettings(t *testing.T) {
	tmpl := NewSiteServer(nil, nil)
	tmpl.MaxHeaderBytes = 100 << 10
	tmpl.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 100}
	b := startBridge(t, &SiteFace{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{siteCertificate(t)}},
		Handler:   siteHandler,
		Server:    tmpl,
	}, echoHandler, nil)
	got := h2Opening(t, b.addr)
	for _, want := range []string{" 0x3=100", fmt.Sprintf(" 0x6=%d", 100<<10+320)} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "SETTINGS ") && strings.Contains(s, want) }) {
			t.Errorf("SETTINGS lack%s: %q", want, got)
		}
	}
}
