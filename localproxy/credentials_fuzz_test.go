package localproxy

import (
	"strings"
	"testing"
)

// FuzzParseCredentials proves ParseCredentials never panics on an -auth
// value and does what its documentation says: "" is no authentication
// (nil, nil); anything else is accepted exactly when it is USER:PASS with
// USER of 1 to 255 bytes and no colon and PASS (the rest, colons and
// all) of at most 255 bytes. Accepted credentials are what NewServer
// takes without panicking, and USER:PASS, the way the credentials file
// writes them, parses back to the same credentials.
func FuzzParseCredentials(f *testing.F) {
	for _, s := range []string{
		"", "user:pass", "user:pa:ss", "user:", "user", ":pass", ":", "::",
		"u1a2b3c4d:0123456789abcdef0123456789abcdef",
		"юзер:пароль ✓", "user:pass\n", " user : pass ", "\x00:\xff",
		strings.Repeat("u", 255) + ":" + strings.Repeat("p", 255),
		strings.Repeat("u", 256) + ":x",
		"x:" + strings.Repeat("p", 256),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCredentials(s)
		user, pass, colon := strings.Cut(s, ":")
		valid := colon && len(user) >= 1 && len(user) <= 255 && len(pass) <= 255
		if s == "" {
			if c != nil || err != nil {
				t.Fatalf(`ParseCredentials("") = %+v, %v; want nil, nil`, c, err)
			}
			return
		}
		if err != nil {
			if c != nil {
				t.Fatal("credentials returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "localproxy: ") {
				t.Fatalf("error %q lacks the \"localproxy: \" prefix", err)
			}
			if valid {
				t.Fatalf("ParseCredentials(%q) refused valid credentials: %v", s, err)
			}
			return
		}
		if !valid {
			t.Fatalf("ParseCredentials(%q) accepted %+v", s, c)
		}
		if c == nil || c.User != user || c.Pass != pass || strings.Contains(c.User, ":") {
			t.Fatalf("ParseCredentials(%q) = %+v, want user %q, pass %q", s, c, user, pass)
		}
		if err := c.check(); err != nil {
			t.Fatalf("accepted credentials NewServer would panic on: %v", err)
		}
		c2, err := ParseCredentials(c.User + ":" + c.Pass)
		if err != nil || c2 == nil || *c2 != *c {
			t.Fatalf("round trip of %+v: %+v, %v", c, c2, err)
		}
	})
}
