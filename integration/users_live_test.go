//go:build linux

package integration_test

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// liveWait bounds how long a running bridge may take to notice a change
// of users.json (it looks every 2 s).
const liveWait = 15 * time.Second

// addUser runs `mirage-server users add NAME` and returns the new link.
func addUser(t *testing.T, state, name string) string {
	t.Helper()
	out, err := runCmd(t, 20*time.Second, serverBin, "users", "add", name, "-state", state)
	if err != nil {
		t.Fatal(err)
	}
	l := linkRE.FindString(string(out))
	if l == "" {
		t.Fatalf("users add %s printed no link: %q", name, out)
	}
	return l
}

// checkLink runs `mirage-client check` on l and returns its output and
// whether the bridge worked.
func checkLink(t *testing.T, l string) (string, error) {
	t.Helper()
	out, err := runCmd(t, 40*time.Second, clientBin, "check", "-target", "127.0.0.1:1", l)
	return string(out), err
}

// waitLink waits until check on l succeeds (works true) or fails
// (works false), and returns the last output.
func waitLink(t *testing.T, what, l string, works bool) string {
	t.Helper()
	deadline := time.Now().Add(liveWait)
	for {
		out, err := checkLink(t, l)
		if (err == nil) == works {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v, check still says %v:\n%s", what, liveWait, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// startHoldingEcho runs a loopback TCP echo server that keeps each
// connection open until the peer closes it.
func startHoldingEcho(t *testing.T) string {
	t.Helper()
	return serveEach(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		io.Copy(c, c)
	})
}

// socksDial connects to target (an IPv4 address and port) through the
// local proxy with its credentials (RFC 1929), as Telegram does.
func socksDial(t *testing.T, lp localProxy, target string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", lp.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fail := func(step string, err error, got []byte) {
		c.Close()
		t.Fatalf("SOCKS5 %s to %s: %v % x", step, target, err, got)
	}
	c.Write([]byte{5, 1, 2})
	r := make([]byte, 2)
	if _, err := io.ReadFull(c, r); err != nil || r[1] != 2 {
		fail("method", err, r)
	}
	auth := append([]byte{1, byte(len(lp.user))}, lp.user...)
	auth = append(append(auth, byte(len(lp.pass))), lp.pass...)
	c.Write(auth)
	if _, err := io.ReadFull(c, r); err != nil || r[1] != 0 {
		fail("auth", err, r)
	}
	host, portStr, _ := net.SplitHostPort(target)
	port, _ := strconv.Atoi(portStr)
	req := append([]byte{5, 1, 0, 1}, net.ParseIP(host).To4()...)
	c.Write(binary.BigEndian.AppendUint16(req, uint16(port)))
	rep := make([]byte, 10)
	if _, err := io.ReadFull(c, rep); err != nil || rep[1] != 0 {
		fail("connect", err, rep)
	}
	c.SetDeadline(time.Time{})
	return c
}

// echoOnce writes msg on c and reads it back, under a deadline.
func echoOnce(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// TestServerUsersLive proves that users add and revoke reach a running
// mirage-server without a restart: a link made while it runs starts
// working within seconds; revoking it ends the user's open connection
// through the bridge, and their link then meets the face (check says the
// bridge answered like an ordinary website), while another user's link,
// another user's open connection and the bridge's own link keep working.
func TestServerUsersLive(t *testing.T) {
	echo := startHoldingEcho(t)
	b := startServer(t, "", "-allow-private")
	pid := b.cmd.Process.Pid
	alice := addUser(t, b.state, "alice")
	waitLink(t, "alice's link made while the bridge runs", alice, true)
	bob := addUser(t, b.state, "bob")
	waitLink(t, "bob's link made while the bridge runs", bob, true)

	_, aliceProxy := startClient(t, alice)
	_, bobProxy := startClient(t, bob)
	ac := socksDial(t, aliceProxy, echo)
	defer ac.Close()
	bc := socksDial(t, bobProxy, echo)
	defer bc.Close()
	if err := echoOnce(ac, "alice before"); err != nil {
		t.Fatalf("alice's connection: %v", err)
	}
	if err := echoOnce(bc, "bob before"); err != nil {
		t.Fatalf("bob's connection: %v", err)
	}

	if out, err := runCmd(t, 20*time.Second, serverBin, "users", "revoke", "alice", "-state", b.state); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(string(out), "without") && !strings.Contains(string(out), "within a few seconds") {
		t.Errorf("users revoke says %q: it should tell the operator that a running bridge takes it", out)
	}
	// Alice's open connection ends: her session is closed on the
	// bridge, and her client cannot make a new one.
	ac.SetReadDeadline(time.Now().Add(liveWait))
	n, err := io.Copy(io.Discard, ac)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("alice's open connection still open %v after users revoke (read %d bytes)", liveWait, n)
	}
	out := waitLink(t, "alice's link after users revoke", alice, false)
	if !strings.Contains(out, "ordinary website") {
		t.Errorf("alice's revoked link should meet the face (check says the bridge answered like a website); check said:\n%s", out)
	}
	if err := echoOnce(bc, "bob after"); err != nil {
		t.Fatalf("bob's open connection after alice was revoked: %v", err)
	}
	for name, l := range map[string]string{"bob": bob, "the bridge": b.link} {
		if out, err := checkLink(t, l); err != nil {
			t.Fatalf("%s's link after alice was revoked: %v\n%s", name, err, out)
		}
	}
	if b.cmd.Process.Pid != pid || b.cmd.ProcessState != nil {
		t.Fatal("the bridge restarted or exited")
	}
	// Alice again, with a new link: the old one stays dead.
	alice2 := addUser(t, b.state, "alice")
	waitLink(t, "alice's new link", alice2, true)
	if _, err := checkLink(t, alice); err == nil {
		t.Fatal("alice's revoked link works again after she got a new one")
	}
	checkNoAddresses(t, b.out.String())
}

// promLineRE is one sample line of the Prometheus text format as the
// bridge writes it: a metric name, optional labels, an integer value.
var promLineRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? -?[0-9]+(\.[0-9]+)?$`)

// parseProm checks that text is valid Prometheus text (every family with
// HELP and TYPE before its samples, every sample well formed and of a
// declared family) and returns the samples by their name and labels.
func parseProm(t *testing.T, text string) map[string]float64 {
	t.Helper()
	samples := map[string]float64{}
	typed := map[string]string{}
	helped := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# HELP "):
			f := strings.SplitN(line, " ", 4)
			if len(f) < 4 || f[3] == "" {
				t.Fatalf("metrics: HELP without text: %q", line)
			}
			helped[f[2]] = true
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(line)
			if len(f) != 4 || (f[3] != "counter" && f[3] != "gauge") {
				t.Fatalf("metrics: bad TYPE line %q", line)
			}
			if !helped[f[2]] {
				t.Fatalf("metrics: TYPE before HELP for %s", f[2])
			}
			typed[f[2]] = f[3]
		case line == "" || strings.HasPrefix(line, "#"):
			t.Fatalf("metrics: unexpected line %q", line)
		default:
			if !promLineRE.MatchString(line) {
				t.Fatalf("metrics: malformed sample %q", line)
			}
			key, val, _ := strings.Cut(line, " ")
			name, _, _ := strings.Cut(key, "{")
			if typed[name] == "" {
				t.Fatalf("metrics: sample of undeclared family: %q", line)
			}
			v, _ := strconv.ParseFloat(val, 64)
			if _, dup := samples[key]; dup {
				t.Fatalf("metrics: sample repeated: %q", line)
			}
			samples[key] = v
		}
	}
	return samples
}

// httpGet fetches url with a deadline and returns status, content type
// and body.
func httpGet(t *testing.T, c *http.Client, url string) (int, string, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// TestMetrics proves the operator's counters with the real binaries:
// after a download through alice's link, the -metrics listener on
// loopback serves valid Prometheus text in which alice's bytes down
// cover the download (and bob, who did nothing, has zeros); mirage-server
// stats prints the same per-user table from the status file (mode 0600);
// the bridge's public port does not serve /metrics (it answers as it does
// for any unknown page); and a -metrics address off loopback is refused
// with a reason.
func TestMetrics(t *testing.T) {
	const size = 1 << 20
	o := startOrigin(t, size)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startServer(t, "", "-allow-private", "-metrics", metricsAddr)
	waitListening(t, metricsAddr, 10*time.Second)
	alice := addUser(t, b.state, "alice")
	addUser(t, b.state, "bob")
	waitLink(t, "alice's link", alice, true)

	_, lp := startClient(t, alice)
	c := socksDial(t, lp, o.addr)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	io.WriteString(c, "GET /blob HTTP/1.0\r\nHost: origin\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("download through alice's link: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	c.Close()
	if err != nil || sha256Hex(body) != o.hash {
		t.Fatalf("download through alice's link: %d bytes, %v", len(body), err)
	}

	hc := &http.Client{Timeout: 10 * time.Second}
	var m map[string]float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, ctype, text := httpGet(t, hc, "http://"+metricsAddr+"/metrics")
		if status != 200 || !strings.HasPrefix(ctype, "text/plain") {
			t.Fatalf("metrics: status %d, content type %q", status, ctype)
		}
		m = parseProm(t, text)
		// The relay's byte counts land when the stream ends.
		if m[`mirage_bytes_total{user="alice",direction="down"}`] >= size || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for key, want := range map[string]func(float64) bool{
		`mirage_bytes_total{user="alice",direction="down"}`: func(v float64) bool { return v >= size && v < size+64<<10 },
		`mirage_bytes_total{user="alice",direction="up"}`:   func(v float64) bool { return v > 0 && v < 4096 },
		`mirage_streams_total{user="alice"}`:                func(v float64) bool { return v >= 1 },
		`mirage_sessions_total{user="alice"}`:               func(v float64) bool { return v >= 1 },
		// The client may have let its idle session go by now.
		`mirage_sessions_open{user="alice"}`:              func(v float64) bool { return v == 0 || v == 1 },
		`mirage_bytes_total{user="bob",direction="down"}`: func(v float64) bool { return v == 0 },
		`mirage_streams_total{user="bob"}`:                func(v float64) bool { return v == 0 },
		`mirage_sessions_total{user="default"}`:           func(v float64) bool { return v == 0 },
	} {
		v, ok := m[key]
		if !ok || !want(v) {
			t.Errorf("metrics: %s = %v (present %v)", key, v, ok)
		}
	}
	for key := range m {
		if strings.Contains(key, "127.0.0.1") {
			t.Errorf("metrics carry an address: %s", key)
		}
	}

	// The public face: /metrics is just another unknown page.
	face := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	defer face.CloseIdleConnections()
	ms, mt, mb := httpGet(t, face, "https://"+b.addr+"/metrics")
	us, ut, ub := httpGet(t, face, "https://"+b.addr+"/no-such-page-7f3a")
	if ms != us || mt != ut || mb != ub {
		t.Errorf("the face answers /metrics (%d %q %q) unlike an unknown page (%d %q %q)", ms, mt, mb, us, ut, ub)
	}
	if strings.Contains(mb, "mirage") {
		t.Errorf("the face's /metrics mentions mirage: %q", mb)
	}

	// mirage-server stats, from the status file.
	// The file is rewritten every 5 s: wait for one written after the
	// download.
	path := filepath.Join(b.state, "stats.json")
	aliceRow := regexp.MustCompile(`(?m)^\s*alice\s+[01]\s+[1-9]\d*\s+\d+\s+[1-9]\d*\s+[\d.]+ [KMG]?i?B\s+1\.\d MiB\s*$`)
	bobRow := regexp.MustCompile(`(?m)^\s*bob\s+0\s+0\s+0\s+0\s+0 B\s+0 B\s*$`)
	var out string
	deadline = time.Now().Add(15 * time.Second)
	for {
		o, err := runCmd(t, 10*time.Second, serverBin, "stats", "-state", b.state)
		out = string(o)
		if err == nil && aliceRow.MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirage-server stats (%v) has no row for alice's download:\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !bobRow.MatchString(out) || !strings.Contains(out, "Counters at ") || strings.Contains(out, "WARNING") {
		t.Errorf("mirage-server stats printed:\n%s", out)
	}
	if aliceDown(path) < size {
		t.Errorf("status file: alice's bytes down %d, want at least %d", aliceDown(path), size)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("status file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	// Off loopback, -metrics is refused and says why.
	_, err = runCmd(t, 10*time.Second, serverBin, "-state", t.TempDir(), "-listen", "127.0.0.1:0", "-metrics", "0.0.0.0:9100")
	if err == nil || !strings.Contains(err.Error(), "not a loopback address") || !strings.Contains(err.Error(), "-metrics-public") {
		t.Errorf("-metrics 0.0.0.0:9100: %v; want a refusal naming -metrics-public", err)
	}
	checkNoAddresses(t, b.out.String())
}

// aliceDown reads alice's bytes down from the status file.
func aliceDown(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var s struct {
		Users []struct {
			Name      string `json:"name"`
			BytesDown uint64 `json:"bytes_down"`
		} `json:"users"`
	}
	if json.Unmarshal(b, &s) != nil {
		return 0
	}
	for _, u := range s.Users {
		if u.Name == "alice" {
			return u.BytesDown
		}
	}
	return 0
}
