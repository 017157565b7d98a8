package transport

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// helloTimer records when the first write (the hello) came.
type helloTimer struct {
	net.Conn
	once  sync.Once
	first time.Time
}

func (c *helloTimer) Write(p []byte) (int, error) {
	c.once.Do(func() { c.first = time.Now() })
	return c.Conn.Write(p)
}

func (c *helloTimer) NetConn() net.Conn { return c.Conn }

// TestHelloIsBuiltDuringTheConnect proves that a carrier's ClientHello
// (its key shares, an ML-KEM key among them, and the tag) is built while
// TCP connects, so that the hello leaves as soon as the connection is up:
// on a phone, building it takes milliseconds, which every new carrier
// (and a censor that cuts connections makes many) paid before its hello
// left. Before, the hello was built after the connect: the gap between
// the two was the build time.
func TestHelloIsBuiltDuringTheConnect(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	cfg := b.clientConfig()
	cfg.singleCarrier = true
	// What building a hello costs here (the race detector, a loaded
	// machine): the median of a few.
	var builds []time.Duration
	for range 5 {
		start := time.Now()
		if _, err := buildHello(cfg, nil); err != nil {
			t.Fatal(err)
		}
		builds = append(builds, time.Since(start))
	}
	slices.Sort(builds)
	build := builds[len(builds)/2]
	var gaps []time.Duration
	for range 3 {
		var fw *helloTimer
		var connected time.Time
		cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			// A path with a round trip: the connect takes 30 ms.
			time.Sleep(30 * time.Millisecond)
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			fw = &helloTimer{Conn: c}
			connected = time.Now()
			return fw, nil
		}
		sess, err := Dial(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		sess.Close()
		gaps = append(gaps, fw.first.Sub(connected))
	}
	slices.Sort(gaps)
	t.Logf("building a hello: %v (median of 5); from connected to the hello's first byte: %v", build, gaps)
	if gaps[0] > build/2 {
		t.Fatalf("the hello left %v after the connect, where building one takes %v: it was built after the connect", gaps[0], build)
	}
}
