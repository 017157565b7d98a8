package localproxy

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mirage-pt/mirage/transport/keys"
)

// Credentials are the user name and password local apps must give: as
// SOCKS5 user/password (RFC 1929) or as HTTP Proxy-Authorization: Basic.
// SOCKS5 carries each part in 1 to 255 bytes (a password may be empty).
//
// A local proxy without credentials leaks the bridge: since 2026, apps on
// the same phone or computer are required to scan localhost for open
// SOCKS5 ports and to use them to learn the exit address.
type Credentials struct {
	User, Pass string
}

// ParseCredentials parses "USER:PASS" (everything after the first colon
// is the password); "" means no authentication (nil, nil).
func ParseCredentials(s string) (*Credentials, error) {
	if s == "" {
		return nil, nil
	}
	user, pass, ok := strings.Cut(s, ":")
	if !ok || user == "" {
		return nil, errors.New("localproxy: credentials want USER:PASS")
	}
	c := &Credentials{User: user, Pass: pass}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// check reports credentials that a SOCKS5 app could not send.
func (a *Credentials) check() error {
	if a.User == "" || len(a.User) > 255 || len(a.Pass) > 255 {
		return errors.New("localproxy: the user name must be 1 to 255 bytes and the password at most 255 (SOCKS5 cannot carry more)")
	}
	return nil
}

// ok reports whether user and pass match, in time that does not depend on
// where they differ.
func (a *Credentials) ok(user, pass string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(a.User))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(a.Pass))
	return u&p == 1
}

// NewCredentials makes random credentials from rand (crypto/rand if
// nil): a user name of 8 and a password of 32 lowercase hex digits (128
// bits), letters any app's settings screen and a tg:// link take as they
// are.
func NewCredentials(rnd io.Reader) (*Credentials, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var b [4 + 16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return nil, fmt.Errorf("localproxy: making credentials: %w", err)
	}
	return &Credentials{User: "u" + hex.EncodeToString(b[:4]), Pass: hex.EncodeToString(b[4:])}, nil
}

// CredentialsFile is the name of the file, in a client's state
// directory, that keeps its local proxy credentials.
const CredentialsFile = "proxy-auth"

// LoadOrCreateCredentials returns the credentials kept in
// dir/CredentialsFile, making random ones and writing them there (0600,
// in a 0700 directory it creates if need be) on first use, so that apps
// set up once keep working across restarts. created reports a first use.
func LoadOrCreateCredentials(dir string) (c *Credentials, created bool, err error) {
	path := filepath.Join(dir, CredentialsFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		line, _, _ := strings.Cut(string(b), "\n")
		c, err := ParseCredentials(strings.TrimSpace(line))
		if err != nil || c == nil {
			return nil, false, fmt.Errorf("localproxy: %s is damaged (delete it to make new credentials): want USER:PASS on its first line", path)
		}
		return c, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("localproxy: reading the proxy credentials: %w", err)
	}
	if c, err = NewCredentials(nil); err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("localproxy: creating the state directory: %w", err)
	}
	if err := keys.WriteFileAtomic(path, []byte(c.User+":"+c.Pass+"\n"), 0o600); err != nil {
		return nil, false, fmt.Errorf("localproxy: writing the proxy credentials: %w", err)
	}
	return c, true, nil
}

// TelegramLink returns the tg://socks link that sets Telegram's proxy to
// the SOCKS5 proxy at host:port with these credentials in one tap.
func TelegramLink(host string, port int, c *Credentials) string {
	q := url.Values{}
	q.Set("server", host)
	q.Set("port", strconv.Itoa(port))
	if c != nil {
		q.Set("user", c.User)
		q.Set("pass", c.Pass)
	}
	// Telegram reads the parameters in this order in its own links;
	// Encode would sort them.
	var b strings.Builder
	b.WriteString("tg://socks?")
	for i, k := range []string{"server", "port", "user", "pass"} {
		if !q.Has(k) {
			continue
		}
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(k + "=" + url.QueryEscape(q.Get(k)))
	}
	return b.String()
}
