package transport

import (
	"sync"

	utls "github.com/refraction-networking/utls"
)

// Session resumption for carriers (PROTOCOL.md §4, "Resumption").
//
// A site face's TLS gives each connection a session ticket, as any Go
// server does, and a browser that comes back to a site resumes with one:
// Chrome offers a TLS 1.3 ticket once and never again. A session's later
// carriers do the same. A resumed handshake sends no certificate, so the
// bridge signs nothing, and its flight is the certificate's size shorter,
// which a carrier's byte budget (the censor's freeze) then carries as
// data. A new session's first carrier never resumes: it is the one that
// may send before the proof comes, which only a certificate bound to the
// auth key allows (§5, "Early data"), and a resumed handshake has none.

// maxTickets bounds the tickets a session keeps. A carrier receives one;
// a few cover the carriers a session opens side by side.
const maxTickets = 4

// ticketCache holds the tickets a session's proven carriers received,
// each to be offered once.
type ticketCache struct {
	mu      sync.Mutex
	tickets []*utls.ClientSessionState // oldest first
}

// take returns the newest ticket and forgets it, or nil.
func (c *ticketCache) take() *utls.ClientSessionState {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.tickets)
	if n == 0 {
		return nil
	}
	cs := c.tickets[n-1]
	c.tickets[n-1] = nil
	c.tickets = c.tickets[:n-1]
	return cs
}

// add keeps tickets, dropping the oldest beyond maxTickets.
func (c *ticketCache) add(tickets []*utls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tickets = append(c.tickets, tickets...)
	if over := len(c.tickets) - maxTickets; over > 0 {
		clear(c.tickets[:over])
		c.tickets = c.tickets[over:]
	}
}

// len returns how many tickets are kept.
func (c *ticketCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tickets)
}

// carrierTickets is the utls.ClientSessionCache of one carrier's
// handshake. Get takes a ticket from the session's cache when the carrier
// may resume; Put holds the tickets the carrier receives until keep,
// which the carrier calls once the bridge's proof checked out, so that a
// ticket from anyone else (a website a censor sent the carrier to) is
// never offered. utls's cache key is ignored: a session has one bridge.
type carrierTickets struct {
	session *ticketCache
	resume  bool

	mu  sync.Mutex
	got []*utls.ClientSessionState
}

// Get implements utls.ClientSessionCache.
func (t *carrierTickets) Get(string) (*utls.ClientSessionState, bool) {
	if !t.resume {
		return nil, false
	}
	cs := t.session.take()
	return cs, cs != nil
}

// Put implements utls.ClientSessionCache. utls puts nil to forget an
// expired ticket, which Get has already taken.
func (t *carrierTickets) Put(_ string, cs *utls.ClientSessionState) {
	if cs == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.got) < maxTickets {
		t.got = append(t.got, cs)
	}
}

// keep hands the tickets received so far to the session.
func (t *carrierTickets) keep() {
	t.mu.Lock()
	got := t.got
	t.got = nil
	t.mu.Unlock()
	t.session.add(got)
}
