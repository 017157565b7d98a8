package transport

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/ratelimit"
)

// TestRevokeShortIDOnRunningBridge: SetShortIDs takes effect at once: a
// revoked user's live session ends and new ones meet the face, while
// another user's session goes on; OnSession counts sessions per user and
// streams carry their user's short id.
func TestRevokeShortIDOnRunningBridge(t *testing.T) {
	alice, _ := keys.NewShortID(nil)
	bob, _ := keys.NewShortID(nil)
	var mu sync.Mutex
	open := map[keys.ShortID]int{}
	streamUsers := make(chan keys.ShortID, 16)
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		streamUsers <- st.ShortID
		echoHandler(st)
	}, func(c *ServerConfig) {
		c.ShortIDs = []keys.ShortID{alice, bob}
		c.OnSession = func(id keys.ShortID, opened bool) {
			mu.Lock()
			defer mu.Unlock()
			if opened {
				open[id]++
			} else {
				open[id]--
			}
		}
	})
	dial := func(id keys.ShortID) (*Session, error) {
		cfg := b.clientConfig()
		cfg.ShortID = id
		return Dial(context.Background(), cfg)
	}
	echo := func(s *Session) error {
		st, err := s.OpenStream(context.Background(), Request{Command: CmdDefault})
		if err != nil {
			return err
		}
		defer st.Close()
		return roundTrip(st, payload(3000, 1))
	}
	sa, err := dial(alice)
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := dial(bob)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	for _, s := range []*Session{sa, sb} {
		if err := echo(s); err != nil {
			t.Fatal(err)
		}
	}
	if got := []keys.ShortID{<-streamUsers, <-streamUsers}; got[0] != alice || got[1] != bob {
		t.Fatalf("streams carried short ids %v, want alice then bob", got)
	}
	mu.Lock()
	if open[alice] != 1 || open[bob] != 1 {
		t.Fatalf("sessions per user: %v", open)
	}
	mu.Unlock()

	b.server.SetShortIDs([]keys.ShortID{bob})
	select {
	case <-sa.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked user's session is still open")
	}
	if _, err := dial(alice); !errors.Is(err, ErrNotBridge) {
		t.Fatalf("revoked user dialing: err = %v, want ErrNotBridge (the face)", err)
	}
	if err := echo(sb); err != nil {
		t.Fatalf("the other user's session: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := open[alice]
		mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("OnSession never reported the revoked session's end")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHandshakeRateLimitPerUser: one link holder flooding the bridge with
// valid handshakes meets the face past its burst, and another user is not
// affected.
func TestHandshakeRateLimitPerUser(t *testing.T) {
	flooder, _ := keys.NewShortID(nil)
	other, _ := keys.NewShortID(nil)
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) {
		c.ShortIDs = []keys.ShortID{flooder, other}
		c.RateLimiter = ratelimit.New(0.5, 5, 16)
	})
	refused := 0
	for range 10 {
		cfg := b.clientConfig()
		cfg.ShortID = flooder
		s, err := Dial(context.Background(), cfg)
		if errors.Is(err, ErrNotBridge) {
			refused++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	if refused < 4 {
		t.Fatalf("%d of 10 handshakes refused past a burst of 5", refused)
	}
	cfg := b.clientConfig()
	cfg.ShortID = other
	s, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("another user during the flood: %v", err)
	}
	s.Close()
}

// TestStreamRemoteAddr: a bridge's streams know their client's address
// (tor's ExtORPort wants it as USERADDR), now that a session outlives its
// connections: it is the address of the newest carrier.
func TestStreamRemoteAddr(t *testing.T) {
	got := make(chan string, 1)
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if a := st.RemoteAddr(); a != nil {
			got <- a.String()
		} else {
			got <- ""
		}
		echoHandler(st)
	}, nil)
	s, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if a := <-got; !strings.HasPrefix(a, "127.0.0.1:") {
		t.Fatalf("stream's remote address %q, want the client's", a)
	}
}
