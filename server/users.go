package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

// Users: each person an operator gives the bridge to gets a short id of
// their own, and so a link of their own, which can be revoked without
// touching the others. They are kept in DIR/users.json (0600), beside the
// key pair; the bridge accepts the short ids of the key state plus those
// of every user not revoked.
//
// A running bridge looks at users.json every few seconds (live.go) and
// takes a change at once: a new user's link works, a revoked user's
// sessions end and their link meets the face, without a restart.

// usersFile is the name of the users file in the state directory.
const usersFile = "users.json"

// userNameRE is what a user name may be: something an operator types and
// a file name can hold.
var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// user is one entry of users.json.
type user struct {
	Name    string    `json:"name"`
	ShortID string    `json:"short_id"`
	Created time.Time `json:"created"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// usersDoc is users.json.
type usersDoc struct {
	Version int    `json:"version"`
	Users   []user `json:"users"`
}

// loadUsers reads DIR/users.json; a missing file is no users.
func loadUsers(dir string) ([]user, error) {
	path := filepath.Join(dir, usersFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var doc usersDoc
	if err := json.Unmarshal(b, &doc); err != nil || doc.Version != 1 {
		return nil, fmt.Errorf("%s is damaged (%v): fix it or restore it from a backup; deleting it revokes every user", path, err)
	}
	for _, u := range doc.Users {
		if _, err := keys.ParseShortID(u.ShortID); err != nil || !userNameRE.MatchString(u.Name) {
			return nil, fmt.Errorf("%s: user %q is damaged", path, u.Name)
		}
	}
	return doc.Users, nil
}

func saveUsers(dir string, users []user) error {
	b, err := json.MarshalIndent(usersDoc{Version: 1, Users: users}, "", "  ")
	if err != nil {
		return err
	}
	return keys.WriteFileAtomic(filepath.Join(dir, usersFile), append(b, '\n'), 0o600)
}

// activeShortIDs returns the short ids of the users not revoked.
func activeShortIDs(users []user) []keys.ShortID {
	var ids []keys.ShortID
	for _, u := range users {
		if u.Revoked.IsZero() {
			id, _ := keys.ParseShortID(u.ShortID) // checked by loadUsers
			ids = append(ids, id)
		}
	}
	return ids
}

// acceptedShortIDs is what the bridge accepts: the key state's short ids
// and the users' that are not revoked. A state that accepts any short id
// (an empty list) still does.
func acceptedShortIDs(state *keys.State, users []user) []keys.ShortID {
	if len(state.ShortIDs) == 0 {
		return nil
	}
	return append(append([]keys.ShortID(nil), state.ShortIDs...), activeShortIDs(users)...)
}

const usersUsage = `Usage:
  mirage-server users add NAME      give NAME a link of their own (printed, and kept in DIR/users/NAME.link)
  mirage-server users list          show the users and their short ids
  mirage-server users revoke NAME   stop NAME's link from working (the others keep working)

A running mirage-server takes the change within a few seconds, without a
restart: a revoked user's open connections end at once.

Flags:
`

// runUsers is the users subcommand.
func runUsers(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mirage-server users", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usersUsage)
		fs.PrintDefaults()
	}
	stateDir := fs.String("state", defaultStateDir(), "the bridge's state directory")
	if len(args) == 0 {
		fs.Usage()
		return errors.New("users: want add NAME, list or revoke NAME")
	}
	// Flags may come before or after the name.
	cmd, rest := args[0], args[1:]
	var pos []string
	for {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos, rest = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	users, err := loadUsers(*stateDir)
	if err != nil {
		return err
	}
	find := func(name string) int {
		for i, u := range users {
			if u.Name == name {
				return i
			}
		}
		return -1
	}
	switch {
	case cmd == "list" && len(pos) == 0:
		if len(users) == 0 {
			fmt.Fprintln(stdout, "No users yet: mirage-server users add NAME makes one.")
			return nil
		}
		fmt.Fprintf(stdout, "%-20s %-16s %-10s %s\n", "NAME", "SHORT ID", "STATUS", "SINCE")
		for _, u := range users {
			status, since := "active", u.Created
			if !u.Revoked.IsZero() {
				status, since = "revoked", u.Revoked
			}
			fmt.Fprintf(stdout, "%-20s %-16s %-10s %s\n", u.Name, u.ShortID, status, since.Format(time.DateOnly))
		}
		return nil
	case cmd == "add" && len(pos) == 1:
		name := pos[0]
		if !userNameRE.MatchString(name) {
			return fmt.Errorf("users add %q: a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
		}
		if name == stats.DefaultName || name == stats.UnknownName {
			// The counters use these names for the bridge's own link
			// and for short ids no user owns.
			return fmt.Errorf("users add %q: that name is taken by the counters (mirage-server stats); choose another", name)
		}
		if i := find(name); i >= 0 && users[i].Revoked.IsZero() {
			return fmt.Errorf("users add: %s already exists (revoke it first to give them a new link)", name)
		} else if i >= 0 {
			users = append(users[:i], users[i+1:]...)
		}
		base, err := os.ReadFile(filepath.Join(*stateDir, linkFile))
		if err != nil {
			return fmt.Errorf("users add: %w (run mirage-server once with this -state first: the link's address comes from it)", err)
		}
		l, err := link.Parse(string(base))
		if err != nil {
			return fmt.Errorf("users add: %s: %w", linkFile, err)
		}
		id, err := keys.NewShortID(nil)
		if err != nil {
			return err
		}
		l.ShortID, l.Label = id, name
		users = append(users, user{Name: name, ShortID: id.String(), Created: time.Now().UTC()})
		if err := saveUsers(*stateDir, users); err != nil {
			return fmt.Errorf("users add: %w", err)
		}
		if err := os.MkdirAll(filepath.Join(*stateDir, "users"), 0o700); err == nil {
			keys.WriteFileAtomic(filepath.Join(*stateDir, "users", name+".link"), []byte(l.String()+"\n"), 0o600)
		}
		printLink(stdout, l)
		fmt.Fprintln(stdout, "A running mirage-server accepts the new link within a few seconds.")
		return nil
	case cmd == "revoke" && len(pos) == 1:
		i := find(pos[0])
		if i < 0 {
			return fmt.Errorf("users revoke: no user %q (mirage-server users list shows them)", pos[0])
		}
		if !users[i].Revoked.IsZero() {
			return nil
		}
		users[i].Revoked = time.Now().UTC()
		if err := saveUsers(*stateDir, users); err != nil {
			return fmt.Errorf("users revoke: %w", err)
		}
		os.Remove(filepath.Join(*stateDir, "users", users[i].Name+".link"))
		fmt.Fprintf(stdout, "Revoked %s. A running mirage-server stops accepting the link within a few seconds and ends its open connections; the other links keep working.\n", users[i].Name)
		return nil
	}
	fs.Usage()
	return fmt.Errorf("users %s: want add NAME, list or revoke NAME", strings.Join(args, " "))
}
