// Package stats counts what a bridge carries per user: sessions, streams
// and bytes, by the name an operator gave each short id. It never counts
// by address: nothing here sees or stores one.
//
// Counting is cheap enough for the data path: a user's counters are
// atomics found once per session or stream (one map lookup under a read
// lock); the bytes of a relay are added with one atomic add per read or
// write, never under a lock.
//
// Counters start at zero when the bridge starts and are never reset
// while it runs (Prometheus counters, for rate() and increase()).
package stats

import (
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/mirage-pt/mirage/transport/keys"
)

// Names given to short ids no user owns.
const (
	// DefaultName is the user of the bridge's own short id(s): the link
	// in DIR/client.link and the bridge line.
	DefaultName = "default"
	// UnknownName is any other short id: one a bridge that accepts every
	// id (no short ids configured) saw, or one named by no user.
	// Counting them together keeps strangers' ids from growing the table.
	UnknownName = "unknown"
)

// User is the counters of one user. Its methods are safe for concurrent
// use and do nothing on a nil *User, so code that may run without
// counting needs no checks.
type User struct {
	sessionsOpen  atomic.Int64
	sessionsTotal atomic.Uint64
	streamsOpen   atomic.Int64
	streamsTotal  atomic.Uint64
	bytesUp       atomic.Uint64 // from the client to the destination
	bytesDown     atomic.Uint64 // from the destination to the client
}

// StreamStarted counts a stream the user opened; call StreamEnded when it
// ends.
func (u *User) StreamStarted() {
	if u != nil {
		u.streamsTotal.Add(1)
		u.streamsOpen.Add(1)
	}
}

// StreamEnded counts the end of a stream counted by StreamStarted.
func (u *User) StreamEnded() {
	if u != nil {
		u.streamsOpen.Add(-1)
	}
}

// AddUp counts n bytes sent by the user (towards the destination).
func (u *User) AddUp(n int) {
	if u != nil && n > 0 {
		u.bytesUp.Add(uint64(n))
	}
}

// AddDown counts n bytes sent to the user (from the destination).
func (u *User) AddDown(n int) {
	if u != nil && n > 0 {
		u.bytesDown.Add(uint64(n))
	}
}

// Conn wraps c, the bridge's connection to a stream's destination, so
// that what is written to it counts as the user's upload and what is read
// from it as their download. CloseWrite is passed through (relays
// half-close with it). With a nil u it returns c itself.
func (u *User) Conn(c net.Conn) net.Conn {
	if u == nil {
		return c
	}
	return &countingConn{Conn: c, u: u}
}

// countingConn counts the bytes of a relay at the destination side: the
// stream side is the transport's, whose methods (SessionDone, CloseWrite)
// relays rely on and which stays unwrapped.
type countingConn struct {
	net.Conn
	u *User
}

// NetConn returns the destination's connection (transport.Abort resets
// it).
func (c *countingConn) NetConn() net.Conn { return c.Conn }

// Read and Write go to the destination with sockcopy's raw system calls
// (sockcopy/write.go says why).
func (c *countingConn) Read(p []byte) (int, error) {
	n, err := sockcopy.Read(c.Conn, p)
	c.u.AddDown(n)
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := sockcopy.Write(c.Conn, p)
	c.u.AddUp(n)
	return n, err
}

// CloseWrite half-closes the connection if it can, else closes it.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Counters are a bridge's per-user counters. The zero value is not
// usable: call New. A nil *Counters counts nothing.
type Counters struct {
	started time.Time
	names   atomic.Pointer[map[keys.ShortID]string]

	mu    sync.RWMutex
	users map[string]*User // by name
}

// New returns empty counters; every short id counts as UnknownName until
// SetNames says otherwise.
func New() *Counters {
	c := &Counters{started: time.Now(), users: make(map[string]*User)}
	m := map[keys.ShortID]string{}
	c.names.Store(&m)
	return c
}

// SetNames says which user each short id belongs to (the bridge's own ids
// to DefaultName, the users' to their names). Call it again whenever the
// users change; ids it does not name count as UnknownName from then on.
// Every user named gets a row (of zeros at first), so an operator sees
// the users who have not connected too.
func (c *Counters) SetNames(names map[keys.ShortID]string) {
	if c == nil {
		return
	}
	m := make(map[keys.ShortID]string, len(names))
	for id, n := range names {
		m[id] = n
		c.byName(n)
	}
	c.names.Store(&m)
}

// Name returns the user name of a short id.
func (c *Counters) Name(id keys.ShortID) string {
	if c == nil {
		return UnknownName
	}
	if n, ok := (*c.names.Load())[id]; ok {
		return n
	}
	return UnknownName
}

// For returns the counters of the user of short id id (nil for nil c).
// Look a user up once per session or stream, not per byte.
func (c *Counters) For(id keys.ShortID) *User {
	if c == nil {
		return nil
	}
	return c.byName(c.Name(id))
}

func (c *Counters) byName(name string) *User {
	c.mu.RLock()
	u := c.users[name]
	c.mu.RUnlock()
	if u != nil {
		return u
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if u = c.users[name]; u == nil {
		u = &User{}
		c.users[name] = u
	}
	return u
}

// OnSession counts a session opening (open true) or ending; it has the
// signature of transport.ServerConfig.OnSession. The name is looked up
// at both ends, so a session must not change user in between: names are
// per short id, and a short id keeps its user.
func (c *Counters) OnSession(id keys.ShortID, open bool) {
	u := c.For(id)
	if u == nil {
		return
	}
	if open {
		u.sessionsTotal.Add(1)
		u.sessionsOpen.Add(1)
	} else {
		u.sessionsOpen.Add(-1)
	}
}

// Row is one user's counters at one moment.
type Row struct {
	Name          string `json:"name"`
	SessionsOpen  int64  `json:"sessions_open"`
	SessionsTotal uint64 `json:"sessions_total"`
	StreamsOpen   int64  `json:"streams_open"`
	StreamsTotal  uint64 `json:"streams_total"`
	BytesUp       uint64 `json:"bytes_up"`
	BytesDown     uint64 `json:"bytes_down"`
}

// Snapshot is every user's counters at Time, sorted by name.
type Snapshot struct {
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	Started time.Time `json:"started"`
	Users   []Row     `json:"users"`
}

// Snapshot reads every user's counters. Each counter is read atomically;
// the set is not one instant, which for counters that only grow is fine.
func (c *Counters) Snapshot() Snapshot {
	s := Snapshot{Version: 1, Time: time.Now().UTC()}
	if c == nil {
		return s
	}
	s.Started = c.started.UTC()
	c.mu.RLock()
	for name, u := range c.users {
		s.Users = append(s.Users, Row{
			Name:          name,
			SessionsOpen:  u.sessionsOpen.Load(),
			SessionsTotal: u.sessionsTotal.Load(),
			StreamsOpen:   u.streamsOpen.Load(),
			StreamsTotal:  u.streamsTotal.Load(),
			BytesUp:       u.bytesUp.Load(),
			BytesDown:     u.bytesDown.Load(),
		})
	}
	c.mu.RUnlock()
	slices.SortFunc(s.Users, func(a, b Row) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return s
}
