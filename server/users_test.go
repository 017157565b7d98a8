package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

var linkRE = regexp.MustCompile(`mirage://\S+`)

// TestUsers drives the users subcommand as an operator would: add two
// users, each with a link of their own that differs from the bridge's
// only in its short id and label; list them; revoke one. The bridge then
// accepts the other user's short id and no longer the revoked one's, and
// still its own.
func TestUsers(t *testing.T) {
	dir := t.TempDir()
	state, _, err := keys.LoadOrCreateState(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := &link.Link{Address: "192.0.2.1:443", Params: link.Params{PublicKey: state.PrivateKey.Public(), ServerName: "www.example.com", ShortID: state.ShortIDs[0]}}
	if err := writeClientFiles(dir, base); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := runUsers(append(args, "-state", dir), &out, io.Discard); err != nil {
			t.Fatalf("users %v: %v", args, err)
		}
		return out.String()
	}
	links := map[string]*link.Link{}
	for _, name := range []string{"alice", "bob"} {
		out := run("add", name)
		l, err := link.Parse(linkRE.FindString(out))
		if err != nil {
			t.Fatalf("users add %s printed no link: %v\n%s", name, err, out)
		}
		if l.Address != base.Address || l.PublicKey != base.PublicKey || l.ShortID == base.ShortID || l.Label != name {
			t.Fatalf("%s's link %s, bridge's %s", name, l, base)
		}
		saved, err := os.ReadFile(filepath.Join(dir, "users", name+".link"))
		if err != nil || strings.TrimSpace(string(saved)) != l.String() {
			t.Fatalf("users/%s.link: %q, %v", name, saved, err)
		}
		links[name] = l
	}
	if links["alice"].ShortID == links["bob"].ShortID {
		t.Fatal("two users share a short id")
	}
	list := run("list")
	if !strings.Contains(list, "alice") || !strings.Contains(list, links["bob"].ShortID.String()) {
		t.Fatalf("list:\n%s", list)
	}
	run("revoke", "alice")
	if list := run("list"); !strings.Contains(list, "revoked") {
		t.Fatalf("list after revoke:\n%s", list)
	}
	fi, err := os.Stat(filepath.Join(dir, usersFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("users.json: %v %v", err, fi.Mode())
	}

	users, err := loadUsers(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := acceptedShortIDs(state, users)
	if slices.Contains(ids, links["alice"].ShortID) {
		t.Error("the bridge still accepts a revoked user")
	}
	if !slices.Contains(ids, links["bob"].ShortID) || !slices.Contains(ids, base.ShortID) {
		t.Error("revoking one user dropped another, or the bridge's own short id")
	}

	for _, bad := range [][]string{{"add", "alice/../x"}, {"add", "bob"}, {"revoke", "carol"}, {"frobnicate"}} {
		if err := runUsers(append(bad, "-state", dir), io.Discard, io.Discard); err == nil {
			t.Errorf("users %v: no error", bad)
		}
	}
	// A revoked name can be given a new link.
	run("add", "alice")
}
