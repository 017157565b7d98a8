//go:build linux

package transport

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// netSwitch is a client's network that a test can take away: while it is
// off, dials fail at once (counted in tries), and cut resets every
// connection it made, as a network that drops does.
type netSwitch struct {
	addr  string // where every dial goes
	off   atomic.Bool
	tries atomic.Int64 // dials while off

	mu    sync.Mutex
	conns []net.Conn
}

// dial is a ClientConfig.Dial.
func (n *netSwitch) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	if n.off.Load() {
		n.tries.Add(1)
		return nil, errors.New("test: the network is gone")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, n.addr)
	if err == nil {
		n.mu.Lock()
		n.conns = append(n.conns, c)
		n.mu.Unlock()
	}
	return c, err
}

// cut turns the network off and resets every connection made through it.
func (n *netSwitch) cut() {
	n.off.Store(true)
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.conns {
		c.(*net.TCPConn).SetLinger(0) // a reset, as when the network drops
		c.Close()
	}
	n.conns = nil
}

// switchedSession starts a bridge with loadHandler and a session to it
// through a netSwitch, and has a first download carried.
func switchedSession(t *testing.T) (*testBridge, *netSwitch, context.Context, *Session) {
	t.Helper()
	b := startBridge(t, newSiteFace(t), loadHandler, nil)
	nw := &netSwitch{addr: b.addr}
	cfg := b.clientConfig()
	cfg.Dial = nw.dial
	ctx, sess := dialForAMinute(t, cfg)
	if err := transfer(ctx, sess, 'D', 64<<10, 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return b, nw, ctx, sess
}
