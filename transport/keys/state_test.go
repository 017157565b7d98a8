package keys

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// listDir returns the names in dir, to spot leftover temporary files.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestStateCreateThenLoad proves the first call makes an identity in a new
// 0700 directory with a 0600 file and says so, and the second call returns
// the same identity and says it did not create one.
func TestStateCreateThenLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	seed := bytes.Repeat([]byte{7}, 40)
	st, created, err := LoadOrCreateState(dir, bytes.NewReader(seed))
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	wantKey, _ := GenerateKey(bytes.NewReader(seed))
	if st.PrivateKey != wantKey || len(st.ShortIDs) != 1 || st.ShortIDs[0].String() != "0707070707070707" {
		t.Fatalf("state not made from the reader: %x %v", st.PrivateKey[:], st.ShortIDs)
	}
	path := filepath.Join(dir, StateFileName)
	if runtime.GOOS != "windows" {
		for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700 | fs.ModeDir} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != want {
				t.Errorf("%s mode %v, want %v", p, fi.Mode(), want)
			}
		}
	}
	if names := listDir(t, dir); len(names) != 1 {
		t.Errorf("state dir holds %v, want only %s", names, StateFileName)
	}

	var f map[string]any
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if f["version"] != 1.0 || f["public_key"] != st.PrivateKey.Public().String() ||
		f["private_key"] != st.PrivateKey.Encode() || len(f["short_ids"].([]any)) != 1 {
		t.Fatalf("state file contents: %s", data)
	}

	st2, created, err := LoadOrCreateState(dir, nil)
	if err != nil || created {
		t.Fatalf("second call: created=%v err=%v", created, err)
	}
	if st2.PrivateKey != st.PrivateKey || len(st2.ShortIDs) != 1 || st2.ShortIDs[0] != st.ShortIDs[0] {
		t.Fatal("second call returned a different identity")
	}
}

// TestStateConcurrentCreate proves processes racing to create the state
// all end up with the one identity on disk.
func TestStateConcurrentCreate(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	var wg sync.WaitGroup
	states := make([]*State, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { states[i], _, errs[i] = LoadOrCreateState(dir, nil) })
	}
	wg.Wait()
	onDisk, created, err := LoadOrCreateState(dir, nil)
	if err != nil || created {
		t.Fatalf("reload: created=%v err=%v", created, err)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if states[i].PrivateKey != onDisk.PrivateKey {
			t.Fatalf("caller %d got an identity that is not the one on disk", i)
		}
	}
	if names := listDir(t, dir); len(names) != 1 {
		t.Errorf("state dir holds %v, want only %s", names, StateFileName)
	}
}

// TestStateDamaged proves a state file that exists but is not exactly what
// this code writes is an error naming the file and saying what to do, and
// is left as it was: never silently replaced by a new identity.
func TestStateDamaged(t *testing.T) {
	priv := PrivateKey(fromHex(t, alicePrivateHex))
	other, _ := GenerateKey(bytes.NewReader(bytes.Repeat([]byte{1}, 32)))
	good := (&State{PrivateKey: priv, ShortIDs: []ShortID{{1, 2, 3, 4, 5, 6, 7, 8}}}).marshal()
	if _, err := parseState(good); err != nil {
		t.Fatalf("the undamaged file does not parse: %v", err)
	}
	edit := func(old, new string) string {
		s := strings.Replace(string(good), old, new, 1)
		if s == string(good) {
			t.Fatalf("edit %q found nothing", old)
		}
		return s
	}
	for _, tc := range []struct{ name, data, want string }{
		{"empty", "", "not valid JSON"},
		{"garbage", "\x00\x01garbage", "not valid JSON"},
		{"truncated", string(good[:len(good)/2]), "not valid JSON"},
		{"trailing data", string(good) + "{}", "after the end"},
		{"unknown field", edit(`"version"`, `"extra": 1, "version"`), "unknown field"},
		{"no version", edit(`"version": 1,`, ``), "version is 0"},
		{"bad private key", edit(priv.Encode(), "not-a-key"), "private key"},
		{"truncated private key", edit(priv.Encode(), priv.Encode()[:42]), "42 characters"},
		{"zero private key", edit(priv.Encode(), strings.Repeat("A", 43)), "all zeros"},
		{"public key mismatch", edit(priv.Public().String(), other.Public().String()), "does not match"},
		{"public key missing", edit(priv.Public().String(), ""), "public_key is missing"},
		{"short ids missing", edit(`"short_ids"`, `"short_ids_"`), "unknown field"},
		{"short ids null", edit(`[
    "0102030405060708"
  ]`, "null"), "short_ids is missing"},
		{"bad short id", edit("0102030405060708", "01020304"), "short_ids: id:"},
		{"zero short id", edit("0102030405060708", "0000000000000000"), "not a short id"},
		{"wrong type", edit(`"version": 1`, `"version": "1"`), "not valid JSON"},
		// encoding/json matches names whatever their case and keeps the
		// last of a repeated name: neither is what this code writes.
		{"field name in capitals", edit(`"private_key"`, `"PRIVATE_KEY"`), "unknown field"},
		{"field twice", edit(`"version": 1,`, `"version": 1, "version": 1,`), `"version" twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, StateFileName)
			if err := os.WriteFile(path, []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Stat(path)
			st, created, err := LoadOrCreateState(dir, nil)
			if err == nil {
				t.Fatalf("loaded a damaged state (created=%v, %d short ids)", created, len(st.ShortIDs))
			}
			for _, want := range []string{path, tc.want, "remove it to make a new identity, which invalidates every link and bridge line"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if strings.Contains(err.Error(), priv.Encode()[:20]) {
				t.Errorf("error shows the private key: %v", err)
			}
			after, _ := os.Stat(path)
			data, _ := os.ReadFile(path)
			if string(data) != tc.data || !after.ModTime().Equal(before.ModTime()) {
				t.Error("the damaged file was changed")
			}
			if names := listDir(t, dir); len(names) != 1 {
				t.Errorf("state dir holds %v", names)
			}
		})
	}
}

// TestStateNewerVersion proves a file from a later Mirage is refused with
// advice to upgrade rather than only to delete it.
func TestStateNewerVersion(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StateFileName)
	os.WriteFile(path, []byte(`{"version": 2, "private_key": "x"}`), 0o600)
	_, _, err := LoadOrCreateState(dir, nil)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "newer Mirage") {
		t.Fatalf("error = %v", err)
	}
}

// TestStateUnreadable proves a state path that cannot be read is an error
// and does not make a new identity; a directory stands in for a file the
// process may not read, since root reads any file.
func TestStateUnreadable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StateFileName)
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	_, created, err := LoadOrCreateState(dir, nil)
	if err == nil || created || !strings.Contains(err.Error(), path) {
		t.Fatalf("created=%v err=%v", created, err)
	}
	if strings.Contains(err.Error(), "remove it") {
		t.Errorf("an unreadable file is not damaged, yet the error says to remove it: %v", err)
	}
}

// TestStateNoDir proves an empty directory name is refused rather than
// putting the identity in the working directory.
func TestStateNoDir(t *testing.T) {
	if _, _, err := LoadOrCreateState("", nil); err == nil {
		t.Fatal("LoadOrCreateState(\"\") succeeded")
	}
}

// TestWriteFileAtomic proves the file gets the data and exactly the mode
// asked for, replaces an older file, and leaves no temporary file.
func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bridgeline.txt")
	for i, data := range []string{"first\n", "second, longer\n", ""} {
		perm := []os.FileMode{0o600, 0o644, 0o640}[i]
		if err := WriteFileAtomic(path, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Fatalf("read back %q, %v; want %q", got, err, data)
		}
		if fi, _ := os.Stat(path); runtime.GOOS != "windows" && fi.Mode().Perm() != perm {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), perm)
		}
		if names := listDir(t, dir); len(names) != 1 {
			t.Fatalf("dir holds %v, want only bridgeline.txt", names)
		}
	}
}

// TestWriteFileAtomicFailure proves a failed write returns an error and
// leaves neither the target nor a temporary file.
func TestWriteFileAtomicFailure(t *testing.T) {
	dir := t.TempDir()
	// The target is a non-empty directory, so the rename must fail.
	path := filepath.Join(dir, "target")
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(path, []byte("data"), 0o600); err == nil {
		t.Fatal("WriteFileAtomic over a non-empty directory succeeded")
	}
	if names := listDir(t, dir); len(names) != 1 || names[0] != "target" {
		t.Fatalf("dir holds %v", names)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), []byte("data"), 0o600); err == nil {
		t.Fatal("WriteFileAtomic into a missing directory succeeded")
	}
}

// TestWriteFileNewRefusesToReplace proves the create-only write used for
// the state never replaces an existing file and cleans up after itself.
func TestWriteFileNewRefusesToReplace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StateFileName)
	if err := writeFileNew(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFileNew(path, []byte("two"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "one" {
		t.Fatalf("file holds %q, want the first write", got)
	}
	if names := listDir(t, dir); len(names) != 1 {
		t.Fatalf("dir holds %v", names)
	}
}
