package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
)

// What a running bridge does for its operator beside serving clients:
// it takes changes to users.json without a restart, and counts per user
// (never per address) into DIR/stats.json and, if asked, a loopback
// Prometheus listener.

// Intervals of the operator's side. Variables so that tests can shorten
// them.
var (
	// usersPollInterval is how often users.json is looked at. Polling
	// its size, time and inode is one stat call: cheaper and more
	// portable than a file-watching dependency, and a few seconds is
	// soon enough for an operator revoking a link.
	usersPollInterval = 2 * time.Second
	// statsInterval is how often DIR/stats.json is rewritten.
	statsInterval = 5 * time.Second
)

// liveUsers keeps the short ids the bridge(s) accept in step with
// users.json while they run, and the counters' names with them.
type liveUsers struct {
	dir      string
	own      []keys.ShortID // the key state's short ids: "default"
	counters *stats.Counters
	log      *slog.Logger

	mu      sync.Mutex
	servers []*transport.Server
	ids     []keys.ShortID // accepted now
	last    os.FileInfo    // users.json as last read; nil: absent
}

// newLiveUsers reads users.json (an error if it is damaged: the bridge
// must not start without the users the operator made) and names the
// counters.
func newLiveUsers(dir string, state *keys.State, counters *stats.Counters, log *slog.Logger) (*liveUsers, error) {
	l := &liveUsers{dir: dir, own: state.ShortIDs, counters: counters, log: log}
	fi, _ := os.Stat(filepath.Join(dir, usersFile))
	users, err := loadUsers(dir)
	if err != nil {
		return nil, err
	}
	l.apply(users, fi)
	return l, nil
}

// accepted returns the short ids to accept now.
func (l *liveUsers) accepted() []keys.ShortID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids
}

// add makes srv follow the users from now on.
func (l *liveUsers) add(srv *transport.Server) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.servers = append(l.servers, srv)
	srv.SetShortIDs(l.ids)
}

// apply takes users as the current set: names for the counters first (so
// that a new user's first session counts under their name), then the
// accepted ids of every server (which ends revoked users' sessions).
func (l *liveUsers) apply(users []user, fi os.FileInfo) {
	names := make(map[keys.ShortID]string, len(l.own)+len(users))
	// Revoked users keep their name: their sessions ending are counted
	// under it.
	for _, u := range users {
		id, _ := keys.ParseShortID(u.ShortID) // checked by loadUsers
		names[id] = u.Name
	}
	for _, id := range l.own {
		names[id] = stats.DefaultName
	}
	l.counters.SetNames(names)
	ids := acceptedShortIDs(&keys.State{ShortIDs: l.own}, users)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids, l.last = ids, fi
	for _, srv := range l.servers {
		srv.SetShortIDs(ids)
	}
}

// changed reports whether users.json differs from what was last read:
// another size, time or file (users add and revoke replace it by
// rename), or it appeared or went.
func (l *liveUsers) changed(fi os.FileInfo) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case fi == nil || l.last == nil:
		return (fi == nil) != (l.last == nil)
	default:
		return fi.Size() != l.last.Size() || !fi.ModTime().Equal(l.last.ModTime()) || !os.SameFile(fi, l.last)
	}
}

// poll looks at users.json once and applies it if it changed. A damaged
// file is reported and ignored: the bridge keeps the users it has rather
// than dropping them all because of an editing mistake.
func (l *liveUsers) poll() {
	fi, err := os.Stat(filepath.Join(l.dir, usersFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("cannot look at the users file; keeping the current users", "error", err.Error())
			return
		}
		fi = nil
	}
	if !l.changed(fi) {
		return
	}
	users, err := loadUsers(l.dir)
	if err != nil {
		l.log.Error("the users file changed but cannot be read; keeping the current users until it is fixed", "error", err.Error())
		// Remember it, so the error is logged once per change.
		l.mu.Lock()
		l.last = fi
		l.mu.Unlock()
		return
	}
	l.apply(users, fi)
	active := len(activeShortIDs(users))
	l.log.Info("users changed: now accepting the bridge's own link and the users' not revoked", "active users", active, "revoked users", len(users)-active)
}

// run polls until ctx ends.
func (l *liveUsers) run(ctx context.Context) {
	t := time.NewTicker(usersPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.poll()
		}
	}
}

// writeStats writes DIR/stats.json every statsInterval until ctx ends,
// and once more then, so that the file shows the last counts.
func writeStats(ctx context.Context, dir string, counters *stats.Counters, log *slog.Logger) {
	path := filepath.Join(dir, stats.StatusFile)
	failing := false
	write := func() {
		err := stats.WriteFile(path, counters.Snapshot())
		switch {
		case err != nil && !failing:
			log.Warn("cannot write the status file (mirage-server stats will show old counts)", "error", err.Error())
		case err == nil && failing:
			log.Info("writing the status file again")
		}
		failing = err != nil
	}
	write()
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			write()
			return
		case <-t.C:
			write()
		}
	}
}

// checkMetricsAddr refuses a -metrics address other than loopback unless
// the operator said -metrics-public.
func checkMetricsAddr(addr string, public bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-metrics %q: want HOST:PORT, e.g. 127.0.0.1:9100", addr)
	}
	if public {
		return nil
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("-metrics %q is not a loopback address: the metrics list every user and what each carries, and a port that answers them marks the machine as a bridge to anyone who probes it. "+
		"Listen on 127.0.0.1:PORT and reach it through an SSH tunnel or a Prometheus on this machine, or, if a firewall keeps strangers away from that address, add -metrics-public", addr)
}

// serveMetrics serves the counters as Prometheus text at /metrics on
// addr (loopback: checkMetricsAddr) until ctx ends. It returns once the
// address listens, or an error if it cannot.
func serveMetrics(ctx context.Context, addr string, counters *stats.Counters, log *slog.Logger) (net.Addr, error) {
	ln, err := transport.Listen(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics: cannot listen on %s: %w (choose another port)", addr, err)
	}
	srv := &http.Server{
		Handler:           counters.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          discardLog,
	}
	go srv.Serve(ln)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("serving metrics (Prometheus text) at /metrics", "listen", ln.Addr().String())
	return ln.Addr(), nil
}

// operatorSide is the operator's side of one running mirage-server: the
// users watcher, the status file and the metrics listener.
type operatorSide struct {
	users  *liveUsers
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startOperatorSide starts the operator's side for the bridge(s) whose
// state is in dir. stop ends it.
func startOperatorSide(ctx context.Context, c *config, dir string, state *keys.State, counters *stats.Counters, log *slog.Logger) (*operatorSide, error) {
	users, err := newLiveUsers(dir, state, counters, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	o := &operatorSide{users: users, cancel: cancel}
	if c.metrics != "" {
		if _, err := serveMetrics(ctx, c.metrics, counters, log); err != nil {
			cancel()
			return nil, err
		}
	}
	o.wg.Go(func() { users.run(ctx) })
	o.wg.Go(func() { writeStats(ctx, dir, counters, log) })
	return o, nil
}

// stop ends the operator's side, after a last write of the status file.
func (o *operatorSide) stop() {
	o.cancel()
	o.wg.Wait()
}
