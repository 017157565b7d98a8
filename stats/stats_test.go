package stats

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
)

func id(b byte) keys.ShortID { return keys.ShortID{b, 1, 2, 3, 4, 5, 6, 7} }

// TestCountsPerUser proves that counts land on the user a short id
// belongs to, that ids nobody owns are lumped together as "unknown",
// that a nil *Counters or *User counts nothing without failing, and
// that concurrent counting loses nothing.
func TestCountsPerUser(t *testing.T) {
	c := New()
	c.SetNames(map[keys.ShortID]string{id(1): DefaultName, id(2): "alice", id(3): "bob"})
	c.OnSession(id(2), true)
	c.OnSession(id(2), true)
	c.OnSession(id(2), false)
	c.OnSession(id(9), true) // nobody's
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			u := c.For(id(2))
			u.StreamStarted()
			u.AddUp(10)
			u.AddDown(100)
			u.AddDown(-5) // ignored
			u.StreamEnded()
		})
	}
	wg.Wait()
	c.For(id(3)).StreamStarted()
	got := map[string]Row{}
	for _, r := range c.Snapshot().Users {
		got[r.Name] = r
	}
	want := map[string]Row{
		DefaultName: {Name: DefaultName},
		"alice":     {Name: "alice", SessionsOpen: 1, SessionsTotal: 2, StreamsTotal: 50, BytesUp: 500, BytesDown: 5000},
		"bob":       {Name: "bob", StreamsOpen: 1, StreamsTotal: 1},
		UnknownName: {Name: UnknownName, SessionsOpen: 1, SessionsTotal: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("%s: %+v, want %+v", n, got[n], w)
		}
	}

	var nilC *Counters
	nilC.OnSession(id(2), true)
	nilC.SetNames(nil)
	u := nilC.For(id(2))
	u.StreamStarted()
	u.AddUp(1)
	if u != nil || len(nilC.Snapshot().Users) != 0 {
		t.Fatal("a nil *Counters counted")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if u.Conn(a) != a {
		t.Fatal("a nil *User wrapped a connection")
	}
}

// TestConnCounts proves the relay wrapper counts writes as up and reads
// as down, exactly, and passes CloseWrite through as a half-close.
func TestConnCounts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.Copy(c, c) // echo until the half-close
	}()
	raw, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := New()
	u := c.For(id(1))
	conn := u.Conn(raw)
	msg := strings.Repeat("x", 100000)
	go func() {
		io.WriteString(conn, msg)
		conn.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(conn) // ends only if the half-close reached the echo
	if err != nil || len(got) != len(msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	r := c.Snapshot().Users[0]
	if r.BytesUp != uint64(len(msg)) || r.BytesDown != uint64(len(msg)) {
		t.Fatalf("up %d down %d, want %d each", r.BytesUp, r.BytesDown, len(msg))
	}
}

// TestPrometheus checks the exposition text line by line.
func TestPrometheus(t *testing.T) {
	c := New()
	c.SetNames(map[keys.ShortID]string{id(2): "alice"})
	c.OnSession(id(2), true)
	u := c.For(id(2))
	u.StreamStarted()
	u.AddUp(123)
	u.AddDown(4567)
	var b bytes.Buffer
	if err := WritePrometheus(&b, c.Snapshot()); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, line := range []string{
		"# HELP mirage_bytes_total ",
		"# TYPE mirage_bytes_total counter\n",
		"# TYPE mirage_sessions_open gauge\n",
		"# TYPE mirage_streams_total counter\n",
		`mirage_bytes_total{user="alice",direction="up"} 123` + "\n",
		`mirage_bytes_total{user="alice",direction="down"} 4567` + "\n",
		`mirage_sessions_open{user="alice"} 1` + "\n",
		`mirage_sessions_total{user="alice"} 1` + "\n",
		`mirage_streams_open{user="alice"} 1` + "\n",
		`mirage_streams_total{user="alice"} 1` + "\n",
	} {
		if !strings.Contains(text, line) {
			t.Errorf("no %q in:\n%s", line, text)
		}
	}
	if !strings.HasSuffix(text, "\n") {
		t.Error("text does not end with a newline")
	}
	if got := escapeLabel("a\"b\\c\nd"); got != `a\"b\\c\nd` {
		t.Errorf("escapeLabel: %s", got)
	}
}

// TestStatusFile proves the status file round-trips, is written 0600
// without leaving temporary files, and that the table says when it is
// old.
func TestStatusFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StatusFile)
	if _, err := ReadFile(path); err == nil || !strings.Contains(err.Error(), "is it running") {
		t.Fatalf("missing file: %v", err)
	}
	c := New()
	c.SetNames(map[keys.ShortID]string{id(2): "alice"})
	c.For(id(2)).AddDown(3 << 20)
	for range 3 {
		if err := WriteFile(path, c.Snapshot()); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v %v", err, fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("directory holds %d files, want only the status file", len(ents))
	}
	s, err := ReadFile(path)
	if err != nil || len(s.Users) != 1 || s.Users[0].BytesDown != 3<<20 {
		t.Fatalf("read back %+v, %v", s, err)
	}
	var out bytes.Buffer
	WriteTable(&out, s, s.Time.Add(time.Second), 30*time.Second)
	if !strings.Contains(out.String(), "3.0 MiB") || strings.Contains(out.String(), "WARNING") {
		t.Errorf("table:\n%s", out.String())
	}
	out.Reset()
	WriteTable(&out, s, s.Time.Add(time.Hour), 30*time.Second)
	if !strings.Contains(out.String(), "WARNING") {
		t.Errorf("an hour-old file gives no warning:\n%s", out.String())
	}
	os.WriteFile(path, []byte("{"), 0o600)
	if _, err := ReadFile(path); err == nil {
		t.Fatal("a damaged file was read")
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestHandler proves the metrics handler serves the text at /metrics
// with the exposition content type, and nothing at any other path.
func TestHandler(t *testing.T) {
	c := New()
	c.SetNames(map[keys.ShortID]string{id(2): "alice"})
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != PrometheusContentType || !strings.Contains(string(body), `mirage_streams_total{user="alice"} 0`) {
		t.Fatalf("/metrics: %d %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	for _, path := range []string{"/", "/metrics/x", "/debug/pprof/"} {
		resp, err := hc.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, resp.StatusCode)
		}
	}
}
