package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// limitBridge is a real bridge on loopback with e.Handle as its stream
// handler, accepting any short id, so that tests can be several users.
type limitBridge struct {
	addr string
	pub  keys.PublicKey
	pin  link.Pin // of its self-signed certificate
}

func startLimitBridge(t *testing.T, e *Handler) *limitBridge {
	t.Helper()
	const sni = "bridge.test"
	priv, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cert := selfSignedCert(t, sni)
	srv, err := transport.NewServer(transport.ServerConfig{
		PrivateKey: priv,
		Site: &transport.SiteFace{
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
			Handler:   http.NotFoundHandler(),
		},
		Handler: e.Handle,
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
	t.Cleanup(func() {
		srv.Close()
		<-errc
	})
	return &limitBridge{addr: ln.Addr().String(), pub: priv.Public(), pin: transporttest.Pin(t, cert)}
}

// session dials the bridge as the user with short id id.
func (b *limitBridge) session(t *testing.T, id keys.ShortID) *transport.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sess, err := transport.Dial(ctx, &transport.ClientConfig{
		Address: b.addr,
		Params:  link.Params{PublicKey: b.pub, ServerName: "bridge.test", ShortID: id, Pin: b.pin},
	})
	if err != nil {
		t.Fatalf("dialing the test bridge: %v", err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// startTCPHolder accepts TCP connections on 127.0.0.1 and holds them,
// reading nothing and with no goroutine each: the idle destinations of
// idle streams, costing the measurement nothing of their own.
func startTCPHolder(t *testing.T) transport.Request {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	return connectTo(ln.Addr().(*net.TCPAddr).AddrPort())
}

var udpRequest = transport.Request{Command: transport.CmdUDP}

// openN opens n streams for req on sess, 50 at a time, and fails the test
// on any error.
func openN(t *testing.T, sess *transport.Session, req transport.Request, n int) []net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*testTimeout)
	defer cancel()
	streams := make([]net.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 50)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			streams[i], errs[i] = sess.OpenStream(ctx, req)
		}()
	}
	wg.Wait()
	for _, s := range streams {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("opening %d streams: %v", n, err)
	}
	return streams
}

// inUse is the memory the process has in use for its heap and its
// goroutines' stacks, after a collection.
func inUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestIdleStreamsCost proves that a link holder's idle streams and UDP
// relays cost the bridge bounded memory: 1,000 idle TCP streams and 1,000
// idle UDP relays (on two sessions of one user: the transport caps a
// session at 1,024 streams) cost at most 64 MiB of heap and stacks in all,
// client side included. (Before: each UDP relay held two 64 KiB buffers
// for as long as it lived, 128 MiB for the relays alone.)
func TestIdleStreamsCost(t *testing.T) {
	const n = 1000
	// The default per-user UDP limit is lower than this test needs.
	b := startLimitBridge(t, New(Config{AllowPrivate: true, MaxUDPRelaysPerUser: 2 * n}))
	id, _ := keys.NewShortID(nil)
	tcpSess, udpSess := b.session(t, id), b.session(t, id)
	dst := startTCPHolder(t)
	// Warm up, so that pools and one-off allocations are not counted.
	for _, s := range append(openN(t, tcpSess, dst, 10), openN(t, udpSess, udpRequest, 10)...) {
		s.Close()
	}
	before := inUse()
	openN(t, tcpSess, dst, n)
	openN(t, udpSess, udpRequest, n)
	after := inUse()
	cost := int64(after) - int64(before)
	t.Logf("%d idle TCP streams and %d idle UDP relays: %.1f MiB (%.1f KiB each)",
		n, n, float64(cost)/(1<<20), float64(cost)/(2*n)/1024)
	if cost > 64<<20 {
		t.Fatalf("idle streams cost %.1f MiB, want <= 64 MiB", float64(cost)/(1<<20))
	}
}

// TestUserLimits proves that a user past its stream or UDP relay limit is
// refused (with a SOCKS-style status, its session and open streams
// untouched) while another user is not, and that the global limits hold
// across users. (Before: nothing refused them.)
func TestUserLimits(t *testing.T) {
	e := New(Config{
		AllowPrivate:        true,
		MaxStreamsPerUser:   6,
		MaxStreams:          10,
		MaxUDPRelaysPerUser: 2,
		MaxUDPRelays:        3,
	})
	b := startLimitBridge(t, e)
	alice, _ := keys.NewShortID(nil)
	bob, _ := keys.NewShortID(nil)
	a, c := b.session(t, alice), b.session(t, bob)
	dst := startTCPHolder(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	refused := func(sess *transport.Session, req transport.Request, who string) {
		t.Helper()
		st, err := sess.OpenStream(ctx, req)
		var se *transport.StatusError
		if !errors.As(err, &se) || se.Status != transport.StatusGeneralFailure {
			if st != nil {
				st.Close()
			}
			t.Fatalf("%s past a limit: %v, want a general-failure refusal", who, err)
		}
	}

	openN(t, a, udpRequest, 2)
	refused(a, udpRequest, "alice's third UDP relay")
	openN(t, c, udpRequest, 1) // bob is not alice
	refused(c, udpRequest, "bob's UDP relay past the global limit of 3")

	openN(t, a, dst, 4) // 6 streams for alice with her 2 UDP relays
	refused(a, dst, "alice's seventh stream")
	openN(t, c, dst, 3) // bob: 1 UDP relay and 3 streams; 10 in all
	refused(c, dst, "bob's stream past the global limit of 10")
	if a.IsClosed() || c.IsClosed() {
		t.Fatal("a refusal closed a session")
	}
}
