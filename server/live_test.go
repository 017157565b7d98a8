package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

// TestLiveUsers proves what a running bridge takes from users.json
// without a restart: a user added is accepted and counted under their
// name at the next poll, a user revoked is no longer accepted, and a
// damaged file (an operator's editing mistake) changes nothing: the
// bridge keeps the users it had, and says so once.
func TestLiveUsers(t *testing.T) {
	dir := t.TempDir()
	state, _, err := keys.LoadOrCreateState(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := &link.Link{Address: "192.0.2.1:443", Params: link.Params{PublicKey: state.PrivateKey.Public(), ServerName: "www.example.com", ShortID: state.ShortIDs[0]}}
	if err := writeClientFiles(dir, base); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	counters := stats.New()
	l, err := newLiveUsers(dir, state, counters, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got := l.accepted(); !slices.Equal(got, state.ShortIDs) {
		t.Fatalf("without users.json: accepted %v, want the bridge's own %v", got, state.ShortIDs)
	}
	addUser := func(name string) keys.ShortID {
		t.Helper()
		var out bytes.Buffer
		if err := runUsers([]string{"add", name, "-state", dir}, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		lk, err := link.Parse(linkRE.FindString(out.String()))
		if err != nil {
			t.Fatal(err)
		}
		return lk.ShortID
	}
	alice := addUser("alice")
	if slices.Contains(l.accepted(), alice) {
		t.Fatal("accepted before a poll")
	}
	l.poll()
	if !slices.Contains(l.accepted(), alice) || !slices.Contains(l.accepted(), state.ShortIDs[0]) {
		t.Fatalf("after users add and a poll: accepted %v", l.accepted())
	}
	if n := counters.Name(alice); n != "alice" {
		t.Fatalf("alice's short id counts as %q", n)
	}
	if n := counters.Name(state.ShortIDs[0]); n != stats.DefaultName {
		t.Fatalf("the bridge's own short id counts as %q", n)
	}
	bob := addUser("bob")
	if err := runUsers([]string{"revoke", "alice", "-state", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	l.poll()
	if got := l.accepted(); slices.Contains(got, alice) || !slices.Contains(got, bob) {
		t.Fatalf("after revoke alice: accepted %v", got)
	}
	if n := counters.Name(alice); n != "alice" {
		t.Fatalf("a revoked user's ending sessions count as %q", n)
	}

	before := l.accepted()
	if err := os.WriteFile(filepath.Join(dir, usersFile), []byte(`{"version":1,"users":[`), 0o600); err != nil {
		t.Fatal(err)
	}
	l.poll()
	l.poll()
	if got := l.accepted(); !slices.Equal(got, before) {
		t.Fatalf("a damaged users.json changed the accepted ids to %v", got)
	}
	if n := strings.Count(logs.String(), "cannot be read"); n != 1 {
		t.Fatalf("a damaged users.json was reported %d times, want once:\n%s", n, logs.String())
	}

	// Deleting the file revokes every user (as loadUsers's error says),
	// keeping the bridge's own link.
	os.Remove(filepath.Join(dir, usersFile))
	l.poll()
	if got := l.accepted(); !slices.Equal(got, state.ShortIDs) {
		t.Fatalf("without users.json: accepted %v", got)
	}
	if strings.Contains(logs.String(), "192.0.2.1") {
		t.Fatal("an address reached the log")
	}
}

// TestUsersReservedNames proves the names the counters use for the
// bridge's own link and for unknown short ids cannot be given to a user.
func TestUsersReservedNames(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{stats.DefaultName, stats.UnknownName} {
		err := runUsers([]string{"add", name, "-state", dir}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "choose another") {
			t.Errorf("users add %s: %v", name, err)
		}
	}
}

// TestMetricsAddr proves -metrics listens on loopback only, unless the
// operator says -metrics-public, and that the refusal says why and what
// to do.
func TestMetricsAddr(t *testing.T) {
	for _, tt := range []struct {
		addr   string
		public bool
		ok     bool
	}{
		{"127.0.0.1:9100", false, true},
		{"[::1]:9100", false, true},
		{"localhost:9100", false, true},
		{"127.0.0.2:9100", false, true},
		{":9100", false, false},
		{"0.0.0.0:9100", false, false},
		{"[::]:9100", false, false},
		{"192.0.2.1:9100", false, false},
		{"example.com:9100", false, false},
		{"0.0.0.0:9100", true, true},
		{"9100", false, false},
	} {
		err := checkMetricsAddr(tt.addr, tt.public)
		if (err == nil) != tt.ok {
			t.Errorf("checkMetricsAddr(%q, %v) = %v", tt.addr, tt.public, err)
		}
		if err != nil && tt.addr != "9100" && !strings.Contains(err.Error(), "-metrics-public") {
			t.Errorf("refusal of %q does not say what to do: %v", tt.addr, err)
		}
	}
	for _, args := range [][]string{{"-metrics", "0.0.0.0:9100"}, {"-metrics-public"}} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("flags %v accepted", args)
		}
	}
	if c, err := parseFlags([]string{"-metrics", "127.0.0.1:9100"}, io.Discard); err != nil || c.metrics != "127.0.0.1:9100" {
		t.Errorf("-metrics 127.0.0.1:9100: %v", err)
	}
}
