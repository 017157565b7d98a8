package egress

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestStatsPerUser runs the egress behind a real bridge with two users'
// short ids and proves the counting an operator reads: alice's TCP relay
// and UDP datagrams count exactly, as her bytes up and down, with her
// streams and session; bob, who only connects, has a session and no
// bytes; and the session counts fall back when the sessions end.
func TestStatsPerUser(t *testing.T) {
	const sni = "bridge.test"
	echo := startTCPEcho(t)
	udpEcho, _ := startUDPEcho(t)
	priv, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := keys.ShortID{1, 1, 1, 1, 1, 1, 1, 1}, keys.ShortID{2, 2, 2, 2, 2, 2, 2, 2}
	counters := stats.New()
	counters.SetNames(map[keys.ShortID]string{alice: "alice", bob: "bob"})
	cert := selfSignedCert(t, sni)
	srv, err := transport.NewServer(transport.ServerConfig{
		PrivateKey: priv,
		ShortIDs:   []keys.ShortID{alice, bob},
		Site: &transport.SiteFace{
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
			Handler:   http.NotFoundHandler(),
		},
		Handler:   New(Config{AllowPrivate: true, Stats: counters}).Handle,
		OnSession: counters.OnSession,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-errc }()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	dial := func(id keys.ShortID) *transport.Session {
		s, err := transport.Dial(ctx, &transport.ClientConfig{
			Address: ln.Addr().String(),
			Params:  link.Params{PublicKey: priv.Public(), ServerName: sni, ShortID: id, Pin: transporttest.Pin(t, cert)},
		})
		if err != nil {
			t.Fatalf("dialing the test bridge: %v", err)
		}
		return s
	}
	as, bs := dial(alice), dial(bob)

	msg := strings.Repeat("m", 300000)
	st, err := as.OpenStream(ctx, connectTo(echo))
	if err != nil {
		t.Fatal(err)
	}
	st.SetDeadline(time.Now().Add(testTimeout))
	go func() {
		io.WriteString(st, msg)
		st.(interface{ CloseWrite() error }).CloseWrite()
	}()
	if got, err := io.ReadAll(st); err != nil || len(got) != len(msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	st.Close()
	us, err := as.OpenStream(ctx, transport.Request{Command: transport.CmdUDP})
	if err != nil {
		t.Fatal(err)
	}
	us.SetDeadline(time.Now().Add(testTimeout))
	dst := transport.Addr{Host: "127.0.0.1", Port: udpEcho.Port()}
	if err := transport.WriteDatagram(us, dst, []byte("ping!")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2+transport.MaxDatagramLen)
	if _, p, err := transport.ReadDatagram(us, buf); err != nil || string(p) != "ping!" {
		t.Fatalf("UDP echo %q, %v", p, err)
	}
	us.Close()

	rows := func() map[string]stats.Row {
		m := map[string]stats.Row{}
		for _, r := range counters.Snapshot().Users {
			m[r.Name] = r
		}
		return m
	}
	// The handlers finish (and count their ends) a moment after the
	// client sees the streams end.
	want := map[string]stats.Row{
		"alice": {Name: "alice", SessionsOpen: 1, SessionsTotal: 1, StreamsTotal: 2, BytesUp: uint64(len(msg)) + 5, BytesDown: uint64(len(msg)) + 5},
		"bob":   {Name: "bob", SessionsOpen: 1, SessionsTotal: 1},
	}
	waitRows(t, rows, want)

	as.Close()
	bs.Close()
	for n, r := range want {
		r.SessionsOpen = 0
		want[n] = r
	}
	waitRows(t, rows, want)
}

func waitRows(t *testing.T, rows func() map[string]stats.Row, want map[string]stats.Row) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		got := rows()
		ok := len(got) == len(want)
		for n, w := range want {
			ok = ok && got[n] == w
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters %+v, want %+v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
