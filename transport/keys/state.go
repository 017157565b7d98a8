package keys

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
)

// State is what a bridge keeps across restarts: its identity. Losing it
// invalidates every link and bridge line the bridge has given out.
type State struct {
	// PrivateKey is the bridge's static X25519 key.
	PrivateKey PrivateKey
	// ShortIDs are the short ids the bridge accepts; the first is the one
	// it puts in the links it prints. Empty means any.
	ShortIDs []ShortID
}

// StateFileName is the name of the state file in a bridge's state
// directory.
const StateFileName = "mirage_state.json"

// stateVersion is the format of the state file this code reads and writes.
const stateVersion = 1

// stateFile is the state file's JSON. ShortIDs is a pointer so that a
// missing field, which this code never writes, is told from an empty list.
type stateFile struct {
	Version    int       `json:"version"`
	PrivateKey string    `json:"private_key"`
	PublicKey  string    `json:"public_key"` // for the operator to read; checked on load
	ShortIDs   *[]string `json:"short_ids"`
}

// LoadOrCreateState reads DIR/mirage_state.json. When the file does not
// exist it makes a new key pair and one random short id (from rand, or
// crypto/rand when rand is nil), writes them, creating DIR with mode 0700 if
// needed and the file with mode 0600 atomically, and returns created=true.
//
// A file that exists but cannot be read back exactly is an error naming the
// file and saying what to do, never a silent new identity: a new key would
// quietly cut off every user the bridge has.
func LoadOrCreateState(dir string, rand io.Reader) (st *State, created bool, err error) {
	if dir == "" {
		return nil, false, errors.New("keys: no state directory given")
	}
	path := filepath.Join(dir, StateFileName)
	st, err = readState(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return st, false, err
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("keys: making the state directory: %w", err)
	}
	priv, err := GenerateKey(rand)
	if err != nil {
		return nil, false, err
	}
	id, err := NewShortID(rand)
	if err != nil {
		return nil, false, err
	}
	st = &State{PrivateKey: priv, ShortIDs: []ShortID{id}}
	err = writeFileNew(path, st.marshal(), 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process (a second copy started by tor, say) made the
		// file between our read and our write. Its identity is the one on
		// disk, so it is the one to use.
		st, err = readState(path)
		return st, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("keys: writing the bridge state: %w", err)
	}
	return st, true, nil
}

// readState reads and checks a state file. An error wrapping
// fs.ErrNotExist means there is no file; any other error is final.
func readState(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		// Permissions and I/O: the file may be fine, so do not suggest
		// removing it. The error already names the path.
		return nil, fmt.Errorf("keys: reading the bridge state: %w", err)
	}
	st, err := parseState(data)
	var newer *newerVersionError
	if errors.As(err, &newer) {
		return nil, fmt.Errorf("keys: %s: %w; run a newer Mirage, or remove the file to make a new identity, which invalidates every link and bridge line you gave out", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("keys: %s is damaged: %w; restore it from a backup, or remove it to make a new identity, which invalidates every link and bridge line you gave out", path, err)
	}
	return st, nil
}

// newerVersionError is a state file from a later version of Mirage, which
// calls for different advice than a damaged one.
type newerVersionError struct{ version int }

func (e *newerVersionError) Error() string {
	return fmt.Sprintf("version %d was written by a newer Mirage (this one reads version %d)", e.version, stateVersion)
}

// parseState parses a state file strictly: unknown fields, trailing data and
// a public key that does not match the private key all mean the file is not
// what this code wrote, and guessing would risk a different identity.
func parseState(data []byte) (*State, error) {
	if err := exactFields(data); err != nil {
		return nil, err
	}
	var f stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid JSON: data after the end of the object")
	}
	switch {
	case f.Version > stateVersion:
		return nil, &newerVersionError{f.Version}
	case f.Version != stateVersion:
		return nil, fmt.Errorf("version is %d, want %d", f.Version, stateVersion)
	case f.ShortIDs == nil:
		return nil, errors.New("short_ids is missing")
	}
	priv, err := ParsePrivateKey(f.PrivateKey)
	if err != nil {
		return nil, err
	}
	// Only equality matters here, so the public key's text is compared as
	// written: any other spelling of the right key is damage too.
	if f.PublicKey == "" {
		return nil, errors.New("public_key is missing")
	}
	if f.PublicKey != priv.Public().String() {
		return nil, errors.New("public_key does not match private_key")
	}
	st := &State{PrivateKey: priv}
	for _, s := range *f.ShortIDs {
		id, err := ParseShortID(s)
		if err != nil {
			return nil, fmt.Errorf("short_ids: %w", err)
		}
		if id.IsZero() {
			// The zero id means "none" and could not be handed out.
			return nil, fmt.Errorf("short_ids: %q is not a short id", s)
		}
		st.ShortIDs = append(st.ShortIDs, id)
	}
	return st, nil
}

// stateFields are the state file's field names, as written.
var stateFields = map[string]bool{"version": true, "private_key": true, "public_key": true, "short_ids": true}

// exactFields refuses a state file whose object names a field in another
// spelling than this code writes, or twice: encoding/json matches field
// names whatever their case and keeps the last of a repeated one, so
// {"PRIVATE_KEY": …, "private_key": …} loaded, with one of the two keys.
// What is not an object is left to the decoder, which says so.
func exactFields(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil // the decoder says what is wrong
		}
		name, _ := t.(string)
		switch {
		case !stateFields[name]:
			return fmt.Errorf("not valid JSON: unknown field %q (field names are written in lower case)", name)
		case seen[name]:
			return fmt.Errorf("not valid JSON: %q twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

// marshal returns the state file's contents, indented for the operator who
// opens it to see the public key.
func (st *State) marshal() []byte {
	ids := make([]string, len(st.ShortIDs))
	for i, id := range st.ShortIDs {
		ids[i] = id.String()
	}
	data, err := json.MarshalIndent(stateFile{
		Version:    stateVersion,
		PrivateKey: st.PrivateKey.Encode(),
		PublicKey:  st.PrivateKey.Public().String(),
		ShortIDs:   &ids,
	}, "", "  ")
	if err != nil {
		// Strings and an int always marshal.
		panic("keys: marshalling the state: " + err.Error())
	}
	return append(data, '\n')
}

// WriteFileAtomic writes data to path so that path holds either its old
// contents or all of data, even after a crash: it writes a temporary file
// in the same directory, syncs it, renames it over path and syncs the
// directory. The file gets exactly perm, whatever the umask. A failed write
// leaves no temporary file behind.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// writeFileNew is WriteFileAtomic that never replaces: it fails with an
// error wrapping fs.ErrExist when path exists. A hard link gives that
// atomically; where the file system has no hard links it falls back to a
// rename, which can only lose a race no caller here expects.
func writeFileNew(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after a link the data lives on under path
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return syncDir(filepath.Dir(path))
}

// writeTemp writes data with mode perm to a new file next to path, synced
// to disk, and returns its name. The name starts with a dot so that it does
// not look like a real file if a crash leaves it behind.
func writeTemp(path string, data []byte, perm os.FileMode) (name string, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// CreateTemp makes the file 0600; Chmod gives the caller's mode, not
	// cut by the umask, before any data is in it.
	if err := f.Chmod(perm); err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		return "", err
	}
	// Without this sync a crash after the rename could leave path empty:
	// the rename can reach the disk before the data.
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// syncDir makes a rename or link in dir durable. Windows cannot sync a
// directory (and needs not), and some file systems refuse to; a refusal is
// not worth failing a write whose data is already safe.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
