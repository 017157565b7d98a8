package main

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWWWHidesListingsAndDotfiles: -www serves files and directories with an
// index.html, while directory listings and dotfiles (and everything in a
// dot-directory) answer exactly as a missing file does (issue 11: the old
// handler listed every directory and served .git and .env).
func TestWWWHidesListingsAndDotfiles(t *testing.T) {
	root := t.TempDir()
	for name, body := range map[string]string{
		"index.html":        "home page",
		"style.css":         "body{}",
		"docs/index.html":   "docs page",
		"files/report.pdf":  "report",
		"files/.htpasswd":   "admin:secret",
		".env":              "API_KEY=secret",
		".git/config":       "[remote] secret",
		".git/index.html":   "inside a dot-directory",
		"empty/.keep":       "",
		"sub/.hidden/a.txt": "hidden",
	} {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h, err := siteHandler(faceOptions{www: root})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		body, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(body)
	}
	missingCode, missingBody := get("/no-such-file")
	if missingCode != http.StatusNotFound {
		t.Fatalf("a missing file answers %d, want 404", missingCode)
	}

	// (A path ending in /index.html is redirected to its directory before
	// anything is opened, whether it exists or not, so it shows nothing.)
	for _, tc := range []struct {
		path, want string
	}{
		{"/", "home page"},
		{"/style.css", "body{}"},
		{"/docs/", "docs page"},
		{"/files/report.pdf", "report"},
	} {
		if code, body := get(tc.path); code != http.StatusOK || body != tc.want {
			t.Errorf("GET %s = %d %q, want 200 %q", tc.path, code, body, tc.want)
		}
	}
	for _, path := range []string{
		"/files/", "/files", "/empty/", // directories without index.html: no listing
		"/.env", "/.git/config", "/.git/", "/files/.htpasswd",
		"/sub/.hidden/a.txt", "/sub/.hidden/", "/empty/.keep",
		"/docs/../.env", "/%2eenv", "/files/%2ehtpasswd",
	} {
		code, body := get(path)
		if code != missingCode || body != missingBody {
			t.Errorf("GET %s = %d %q, want what a missing file gets: %d %q", path, code, body, missingCode, missingBody)
		}
		if strings.Contains(body, "secret") || strings.Contains(body, "report.pdf") {
			t.Errorf("GET %s leaks %q", path, body)
		}
	}
}

// TestACMEOptions: -acme-directory and -acme-root are checked before the
// bridge starts, with errors that say what to give instead, and the same
// choices reach a bridge under tor as ServerTransportOptions.
func TestACMEOptions(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(root, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string // in the error; "" means no error
	}{
		{[]string{"-domain", "a.example", "-acme-directory", "https://acme.example/dir"}, ""},
		{[]string{"-acme-directory", "https://acme.example/dir"}, "give -domain too"},
		{[]string{"-acme-root", root}, "give -domain too"},
		{[]string{"-domain", "a.example", "-acme-directory", "http://acme.example/dir"}, "want the https:// URL"},
		{[]string{"-domain", "a.example", "-acme-directory", "acme.example"}, "want the https:// URL"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}

	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = managedConfig(c, t.TempDir(), map[string][]string{
		"domain": {"a.example"}, "acme-directory": {"https://acme.example/dir"}, "acme-root": {root},
	}, discardLogger)
	if err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("managed mode with acme-root of a file that is no certificate: %v, want an error naming it", err)
	}
	cfg, params, err := managedConfig(c, t.TempDir(), map[string][]string{
		"domain": {"a.example"}, "acme-directory": {"https://acme.example/dir"},
	}, discardLogger)
	if err != nil {
		t.Fatalf("managed mode with domain and acme-directory: %v", err)
	}
	if params.ServerName != "a.example" || cfg.Site == nil || cfg.Site.TLSConfig.GetCertificate == nil {
		t.Fatalf("managed mode with domain: sni %q, site %v, want an ACME site face for a.example", params.ServerName, cfg.Site)
	}
}

var discardLogger = slog.New(slog.DiscardHandler)

// TestUpstreamSeesNoLocalVisitor: with -upstream, what a prober sends
// cannot pass for the machine's own request: the upstream sees the
// connection from 127.0.0.2 (not 127.0.0.1), a Forwarded header that
// withholds the address, and a Host pinned to the face's names whatever
// Host the prober chose.
func TestUpstreamSeesNoLocalVisitor(t *testing.T) {
	type seen struct{ remote, host, forwarded string }
	got := make(chan seen, 4)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.RemoteAddr, r.Host, r.Header.Get("Forwarded")}
	}))
	defer up.Close()
	for _, tc := range []struct {
		names      []string
		host, want string
	}{
		{[]string{"www.example.com"}, "localhost", "www.example.com"},
		{[]string{"www.example.com"}, "WWW.example.com:443", "WWW.example.com:443"},
		{nil, "localhost", strings.TrimPrefix(up.URL, "http://")},
	} {
		h, err := siteHandler(faceOptions{upstream: up.URL, sni: tc.names})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Host = tc.host
		h.ServeHTTP(httptest.NewRecorder(), req)
		s := <-got
		if s.host != tc.want {
			t.Errorf("names %v, Host %q: the upstream saw Host %q, want %q", tc.names, tc.host, s.host, tc.want)
		}
		if strings.HasPrefix(s.remote, "127.0.0.1:") {
			t.Errorf("the upstream saw the visitor come from %s, like the machine's own requests", s.remote)
		}
		if !strings.Contains(s.forwarded, `for="_hidden"`) {
			t.Errorf("Forwarded = %q: the upstream cannot tell a visitor from a local request", s.forwarded)
		}
	}
}
