//go:build linux

package integration_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// origin is a loopback HTTP server with one blob of random bytes.
type origin struct {
	addr string
	hash string
	size int
}

func startOrigin(t *testing.T, size int) *origin {
	t.Helper()
	blob := make([]byte, size)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &origin{addr: ln.Addr().String(), hash: hex.EncodeToString(sum[:]), size: size}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// curlFetch downloads the origin's blob with curl and the given proxy
// flags, and checks its hash.
func curlFetch(t *testing.T, curl string, o *origin, how string, args ...string) {
	t.Helper()
	url := "http://" + o.addr + "/blob"
	out, err := runCmd(t, 60*time.Second, curl, append([]string{"-sS", "--fail", "--max-time", "50"}, append(args, url)...)...)
	if err != nil {
		t.Fatalf("%s: %v", how, err)
	}
	if got := sha256Hex(out); got != o.hash || len(out) != o.size {
		t.Fatalf("%s: got %d bytes hashing to %s, want %d bytes %s", how, len(out), got, o.size, o.hash)
	}
}

// TestStandaloneCurl proves the user's path end to end with real curl:
// curl → mirage-client (SOCKS5 with remote DNS, HTTP proxy with an
// absolute URI, HTTP CONNECT) → mirage-server → a loopback origin, 8 MiB
// hash-checked; then the bridge restarts and the same client carries on
// without a restart of its own.
func TestStandaloneCurl(t *testing.T) {
	curl := requirePeer(t, "curl")
	o := startOrigin(t, 8<<20)
	state := t.TempDir()
	b := startServer(t, state, "-allow-private")
	client, proxy := startClient(t, b.link)
	url := "http://" + o.addr + "/blob"
	curlFetch(t, curl, o, "socks5-hostname", proxy.curlSOCKS()...)
	curlFetch(t, curl, o, "http proxy", proxy.curlHTTP()...)
	curlFetch(t, curl, o, "http connect", append([]string{"--proxytunnel"}, proxy.curlHTTP()...)...)
	// The log says where the proxy listens (the user's own address, not
	// a client's).
	if want := "point apps at SOCKS5 or HTTP proxy " + proxy.addr; !strings.Contains(client.out.String(), want) {
		t.Errorf("client log lacks %q:\n%s", want, client.out.String())
	}

	// Restart the bridge on the same address with the same state.
	b.stop()
	p := startProc(t, "mirage-server (restarted)", serverBin, nil,
		"-state", state, "-listen", b.addr, "-allow-private", "-log-level", "debug")
	if l := p.waitOutput(t, linkRE, 20*time.Second); l != b.link {
		t.Fatalf("restarted bridge printed another link:\n%s\n%s", l, b.link)
	}
	waitListening(t, b.addr, 10*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := runCmd(t, 20*time.Second, curl, append(append([]string{"-sS", "--fail", "--max-time", "15"}, proxy.curlSOCKS()...), url)...)
		if err == nil && sha256Hex(out) == o.hash {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no fetch through the restarted bridge within 30 s: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	checkNoAddresses(t, ownAddressLines(client.out.String()), p.out.String(), b.out.String())
}

// TestStandaloneCurlFaces proves the same path with the two faces an
// operator would really run: cover mode in front of a real nginx (TLS,
// HTTP/2), and site mode with certificate files and -upstream.
func TestStandaloneCurlFaces(t *testing.T) {
	curl := requirePeer(t, "curl")
	o := startOrigin(t, 8<<20)
	faces := map[string]func(t *testing.T) []string{
		"cover-nginx": func(t *testing.T) []string { return []string{"-cover", startNginx(t), "-sni", faceName} },
		"site-upstream": func(t *testing.T) []string {
			cert, key := writeCert(t)
			return []string{"-cert", cert, "-key", key, "-upstream", "http://" + startOrigin(t, 100).addr}
		},
	}
	for name, args := range faces {
		t.Run(name, func(t *testing.T) {
			b := startServer(t, "", append(args(t), "-allow-private")...)
			_, proxy := startClient(t, b.link)
			curlFetch(t, curl, o, "socks5-hostname", proxy.curlSOCKS()...)
			curlFetch(t, curl, o, "http proxy", proxy.curlHTTP()...)
		})
	}
}

// ownAddressLines drops from a client's output what names its own
// listening addresses on purpose: the lines saying where the proxy
// listens and how to configure apps (the tg:// link, the settings).
func ownAddressLines(out string) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, " ready") || strings.Contains(line, "tg://") || strings.Contains(line, "port ") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// ipPortRE finds an IP address with a port in log text.
var ipPortRE = regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d+|\[[0-9a-fA-F:]+\]:\d+`)

// checkNoAddresses fails if any log line names an address with a port
// (a client's, or a destination's). The link, printed on stdout for the
// operator, is not a log line.
func checkNoAddresses(t *testing.T, outputs ...string) {
	t.Helper()
	for _, out := range outputs {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "mirage://") || strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			if m := ipPortRE.FindString(line); m != "" {
				t.Errorf("log line names an address (%s): %s", m, line)
			}
		}
	}
}

// TestEgressPolicy proves the bridge is not an open proxy into its own
// network: without -allow-private a loopback destination is refused; with
// -strict the refusal reaches curl at once as a SOCKS error ("not
// allowed"), not a reset later; with fast open (the default) curl's
// connection is closed at once and the client's log says why; with
// -allow-private, a closed port comes back as "refused".
func TestEgressPolicy(t *testing.T) {
	curl := requirePeer(t, "curl")
	o := startOrigin(t, 1000)
	b := startServer(t, "")
	fast, fastProxy := startClient(t, b.link)
	start := time.Now()
	if _, err := runCmd(t, 30*time.Second, curl, append(append([]string{"-sS", "--max-time", "20"}, fastProxy.curlSOCKS()...), "http://"+o.addr+"/blob")...); err == nil {
		t.Fatal("the bridge let a client reach its loopback origin without -allow-private")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("fast open: refusal took %v", d)
	}
	fast.waitOutput(t, regexp.MustCompile(`the bridge refused a connection.*not allowed`), 10*time.Second)

	_, proxy := startClient(t, b.link, "-strict")
	start = time.Now()
	_, err := runCmd(t, 30*time.Second, curl, append(append([]string{"-sS", "--max-time", "20"}, proxy.curlSOCKS()...), "http://"+o.addr+"/blob")...)
	if err == nil {
		t.Fatal("the bridge let a client reach its loopback origin without -allow-private")
	}
	// curl names the SOCKS5 reply: "not allowed", or its code, "(2)".
	if msg := strings.ToLower(err.Error()); !strings.Contains(msg, "not allowed") && !strings.Contains(msg, "(2)") {
		t.Fatalf("curl's error does not say the connection was not allowed: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("refusal took %v", d)
	}

	b2 := startServer(t, "", "-allow-private")
	_, proxy2 := startClient(t, b2.link, "-strict")
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, err = runCmd(t, 30*time.Second, curl, append(append([]string{"-sS", "--max-time", "20"}, proxy2.curlSOCKS()...), "http://"+closed+"/")...)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "refused") && !strings.Contains(err.Error(), "(5)") {
		t.Fatalf("a closed port: curl error %v, want connection refused", err)
	}
}

// TestUDPAssociate proves SOCKS5 UDP ASSOCIATE through the tunnel: a
// datagram to a loopback UDP echo server comes back with the echo's
// address as its source.
func TestUDPAssociate(t *testing.T) {
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	b := startServer(t, "", "-allow-private")
	// A hand-written SOCKS5 client without authentication: -auth none.
	_, proxy := startClient(t, b.link, "-auth", "none")

	ctrl, err := net.DialTimeout("tcp", proxy.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	ctrl.SetDeadline(time.Now().Add(30 * time.Second))
	ctrl.Write([]byte{5, 1, 0})
	resp := make([]byte, 2)
	if _, err := io.ReadFull(ctrl, resp); err != nil || resp[1] != 0 {
		t.Fatalf("greeting: %v % x", err, resp)
	}
	ctrl.Write([]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}) // UDP ASSOCIATE, client address unknown
	rep := make([]byte, 10)
	if _, err := io.ReadFull(ctrl, rep); err != nil || rep[1] != 0 || rep[3] != 1 {
		t.Fatalf("UDP ASSOCIATE reply: %v % x", err, rep)
	}
	relay := &net.UDPAddr{IP: net.IP(rep[4:8]), Port: int(binary.BigEndian.Uint16(rep[8:10]))}
	uc, err := net.DialUDP("udp", nil, relay)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	ea := echo.LocalAddr().(*net.UDPAddr)
	hdr := []byte{0, 0, 0, 1}
	hdr = append(hdr, ea.IP.To4()...)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(ea.Port))
	msg := []byte("ping through mirage")
	got := make([]byte, 2048)
	for attempt := 0; ; attempt++ {
		uc.Write(append(bytes.Clone(hdr), msg...))
		uc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := uc.Read(got)
		if err == nil {
			if !bytes.Equal(got[:n], append(bytes.Clone(hdr), msg...)) {
				t.Fatalf("echo came back as % x", got[:n])
			}
			return
		}
		if attempt == 10 {
			t.Fatalf("no echo after %d tries: %v", attempt+1, err)
		}
	}
}

// TestServerState proves the operator's files: keys made once and kept
// (0600), client.link and bridgeline.txt written and matching the printed
// link, and a damaged state file is an error naming the file, never a
// silent new identity.
func TestServerState(t *testing.T) {
	state := t.TempDir()
	b := startServer(t, state)
	b.stop()
	link, err := os.ReadFile(filepath.Join(state, "client.link"))
	if err != nil || strings.TrimSpace(string(link)) != b.link {
		t.Fatalf("client.link = %q (%v), printed %q", link, err, b.link)
	}
	// No face flags: no server name anywhere (issue 8), in particular
	// not the "localhost" older bridges all handed out.
	bl, err := os.ReadFile(filepath.Join(state, "bridgeline.txt"))
	if err != nil || !strings.Contains(string(bl), "key=") || strings.Contains(string(bl), "sni=") || strings.Contains(string(bl), "localhost") {
		t.Fatalf("bridgeline.txt = %q (%v), want key= and no sni", bl, err)
	}
	if strings.Contains(b.link, "sni=") || strings.Contains(b.link, "localhost") {
		t.Fatalf("link %s names a server name", b.link)
	}
	entries, _ := os.ReadDir(state)
	for _, e := range entries {
		info, _ := e.Info()
		if strings.Contains(e.Name(), "state") && info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
	var stateFile string
	for _, e := range entries {
		// The identity's state, not the operator files beside it
		// (stats.json is rewritten by a running server, users.json by
		// `users`).
		if strings.HasSuffix(e.Name(), ".json") && e.Name() != "stats.json" && e.Name() != "users.json" {
			stateFile = filepath.Join(state, e.Name())
		}
	}
	if stateFile == "" {
		t.Fatalf("no state file in %v", entries)
	}
	os.WriteFile(stateFile, []byte("{garbage"), 0o600)
	out, err := runCmd(t, 20*time.Second, serverBin, "-state", state, "-listen", "127.0.0.1:0")
	if err == nil {
		t.Fatalf("server started with a damaged state file:\n%s", out)
	}
	if !strings.Contains(err.Error(), filepath.Base(stateFile)) {
		t.Fatalf("error does not name the damaged file: %v", err)
	}
}

// TestClientCheck proves `mirage-client check` tells a user what works
// and, for a link with the wrong key, what is wrong, with a non-zero exit.
func TestClientCheck(t *testing.T) {
	b := startServer(t, "")
	out, err := runCmd(t, 40*time.Second, clientBin, "check", "-target", "127.0.0.1:1", b.link)
	if err != nil || !strings.Contains(string(out), "the bridge works") || !strings.Contains(string(out), "server proof") {
		t.Fatalf("check of a good link: %v\n%s", err, out)
	}
	// Another bridge's key in an otherwise good link.
	other := startServer(t, "")
	key := func(l string) string { return l[len("mirage://"):strings.Index(l, "@")] }
	wrong := strings.Replace(b.link, key(b.link), key(other.link), 1)
	out, err = runCmd(t, 60*time.Second, clientBin, "check", wrong)
	if err == nil {
		t.Fatalf("check of a wrong key succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "FAILED") || !strings.Contains(string(out), "key=") {
		t.Fatalf("check of a wrong key does not say what is wrong:\n%s", out)
	}
}

// TestClientProcs: mirage-client runs on as many cores as -procs says
// (one by default), not on every core as a Go program does unless told,
// once it has connected (it connects on every core). The Go runtime's
// scheduler trace says how many it uses.
func TestClientProcs(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one core: -procs 1 cannot be told from the default")
	}
	b := startServer(t, "")
	p, _ := startClientEnv(t, []string{"GODEBUG=schedtrace=50"}, b.link, "-auth", "none")
	procs := regexp.MustCompile(`SCHED \d+ms: gomaxprocs=(\d+)`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := procs.FindAllStringSubmatch(p.out.String(), -1)
		if len(m) > 0 && m[len(m)-1][1] == "1" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirage-client still runs on more than one core (-procs 1 by default):\n%s", tail(p.out.String(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServerUsers proves per-user links with the real binaries across
// restarts: users add gives alice and bob links of their own that work;
// after users revoke alice and a restart, alice's link meets the face and
// bob's and the bridge's own still work. (TestServerUsersLive proves the
// same on a bridge that keeps running.)
func TestServerUsers(t *testing.T) {
	state := t.TempDir()
	b := startServer(t, state)
	b.stop()
	// Restarts keep the address, which the users' links carry.
	restart := func() *bridge {
		p := startProc(t, "mirage-server (restarted)", serverBin, nil, "-state", state, "-listen", b.addr, "-log-level", "debug")
		l := p.waitOutput(t, linkRE, 20*time.Second)
		waitListening(t, b.addr, 10*time.Second)
		return &bridge{proc: p, addr: b.addr, state: state, link: l}
	}
	userLink := func(name string) string {
		out, err := runCmd(t, 20*time.Second, serverBin, "users", "add", name, "-state", state)
		if err != nil {
			t.Fatal(err)
		}
		l := linkRE.FindString(string(out))
		if l == "" || l == b.link {
			t.Fatalf("users add %s printed %q", name, out)
		}
		return l
	}
	alice, bob := userLink("alice"), userLink("bob")
	check := func(l string) error {
		_, err := runCmd(t, 40*time.Second, clientBin, "check", "-target", "127.0.0.1:1", l)
		return err
	}
	b = restart()
	for name, l := range map[string]string{"alice": alice, "bob": bob, "the bridge": b.link} {
		if err := check(l); err != nil {
			t.Fatalf("%s's link: %v", name, err)
		}
	}
	b.stop()
	if _, err := runCmd(t, 20*time.Second, serverBin, "users", "revoke", "alice", "-state", state); err != nil {
		t.Fatal(err)
	}
	b = restart()
	if err := check(alice); err == nil {
		t.Fatal("a revoked user's link still works")
	}
	for name, l := range map[string]string{"bob": bob, "the bridge": b.link} {
		if err := check(l); err != nil {
			t.Fatalf("%s's link after alice was revoked: %v", name, err)
		}
	}
}

// TestHungDestination proves mirage-server's -dest-stall-timeout: curl
// uploading through the tunnel to a server that accepts and never reads
// (a hung server, a tarpit) has its connection ended once the bridge's
// writes to that server have taken nothing for the timeout, and the
// bridge's debug log says why. Without the flag the bridge would wait
// five minutes, holding the upload's bytes.
func TestHungDestination(t *testing.T) {
	curl := requirePeer(t, "curl")
	// A server that accepts and never reads, until the test ends.
	ended := make(chan struct{})
	defer close(ended)
	hung := serveEach(t, func(net.Conn) { <-ended })
	upload := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(upload, make([]byte, 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startServer(t, "", "-allow-private", "-dest-stall-timeout", "2s")
	_, proxy := startClient(t, b.link, "-auth", "none")
	start := time.Now()
	out, err := runCmd(t, 90*time.Second, curl, append(append([]string{"-sS", "--max-time", "60", "-T", upload}, proxy.curlSOCKS()...), "http://"+hung+"/")...)
	took := time.Since(start)
	if err == nil {
		t.Fatalf("curl's upload to a server that never reads succeeded: %s", out)
	}
	if took > 40*time.Second {
		t.Fatalf("the upload ended after %v (curl: %v); want the 2 s stall timeout and the buffers' filling", took, err)
	}
	t.Logf("upload to a hung server ended after %v: %v", took.Round(time.Millisecond), err)
	b.waitOutput(t, regexp.MustCompile(`relay ended.*the destination took nothing of what the client sent for 2s`), 10*time.Second)
}

// TestCancelledDownloadEndsAtTheOrigin proves an app's dropped download
// ends at the origin too: curl gives up on an endless download through the
// tunnel (--max-time), and the origin's connection is closed within
// seconds, as it would be without a proxy. The client aborts the stream
// (PROTOCOL.md §7), and the bridge closes its connection to the origin.
// Before, the bridge took the client's close for a half-close: it went on
// sending the download, a window's worth through the link for nobody, and
// held the origin's connection for five minutes (its stall timeout).
func TestCancelledDownloadEndsAtTheOrigin(t *testing.T) {
	curl := requirePeer(t, "curl")
	failed := make(chan time.Time, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				failed <- time.Now()
				return
			}
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	b := startServer(t, "", "-allow-private")
	_, proxy := startClient(t, b.link, "-auth", "none")
	_, err = runCmd(t, 30*time.Second, curl, append(append([]string{"-sS", "-o", "/dev/null", "--max-time", "2"}, proxy.curlSOCKS()...), "http://"+ln.Addr().String()+"/endless")...)
	gaveUp := time.Now()
	if err == nil {
		t.Fatal("curl finished an endless download")
	}
	select {
	case at := <-failed:
		t.Logf("the origin's connection ended %v after curl gave up", at.Sub(gaveUp).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("the origin still sends 15 s after curl gave up on the download")
	}
}

// TestDestinationResetReachesTheApp proves a download that a destination
// cuts with a reset is cut for the app too, not ended as if complete: the
// origin answers with a body whose end is the connection's (no length),
// sends part of it and resets the connection, and curl through the tunnel
// must fail. Before, the bridge closed the stream (a FIN) and the client
// closed the app's connection cleanly, so curl took the cut body for the
// whole one and succeeded.
func TestDestinationResetReachesTheApp(t *testing.T) {
	curl := requirePeer(t, "curl")
	origin := serveEach(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 4096)
		c.Read(buf) // the request
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
		c.Write(make([]byte, 256<<10))
		// Let the part reach the bridge, then reset.
		time.Sleep(300 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
	})
	b := startServer(t, "", "-allow-private")
	_, proxy := startClient(t, b.link, "-auth", "none")
	out, err := runCmd(t, 30*time.Second, curl, append(append([]string{"-sS", "-o", "/dev/null", "-w", "%{size_download}", "--max-time", "20"}, proxy.curlSOCKS()...), "http://"+origin+"/")...)
	if err == nil {
		t.Fatalf("curl took a download its origin reset for a whole one (%s bytes)", out)
	}
	t.Logf("curl: %v (%s bytes)", err, out)
}

// TestQuittingClientLetsGoOfItsStreams: a mirage-client stopped as users
// stop it (Ctrl-C, SIGTERM), here in the middle of a download, tells the
// bridge that its session is over, so the bridge closes the connections it
// held to destinations for it at once. A bridge that only sees the
// client's connections end keeps the session, and every destination
// connection of it, for the session's linger time (2 min), in case the
// client comes back: a user who restarts the client would find the
// streams of the old session still counted against their link's stream
// limit.
func TestQuittingClientLetsGoOfItsStreams(t *testing.T) {
	ended := make(chan error, 1)
	origin := serveEach(t, func(c net.Conn) {
		// A download that goes on until the bridge closes its side.
		c.SetDeadline(time.Now().Add(60 * time.Second))
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				ended <- err
				return
			}
		}
	})
	b := startServer(t, "", "-allow-private")
	p, proxy := startClient(t, b.link)
	c := socksDial(t, proxy, origin)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatalf("the download through the tunnel: %v", err)
	}
	start := time.Now()
	p.stop() // SIGINT, as Ctrl-C
	select {
	case err := <-ended:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the bridge held the destination connection until the test's deadline")
		}
		t.Logf("the destination connection ended %v after the client was stopped: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("10 s after its client quit, the bridge still holds the destination connection of the client's stream")
	}
}
