//go:build linux

// Package integration_test runs the real mirage-client and mirage-server
// binaries against real peers (tor, curl, nginx) on loopback. Every
// process a test starts is stopped by PID when the test ends; every wait
// is bounded.
package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Paths of the binaries built once for the whole package.
var (
	serverBin string
	clientBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mirage-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	serverBin = filepath.Join(dir, "mirage-server")
	clientBin = filepath.Join(dir, "mirage-client")
	for bin, pkg := range map[string]string{serverBin: "../server", clientBin: "../client"} {
		cmd := exec.Command("go", "build", "-race", "-o", bin, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg, "failed:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requirePeer skips (locally) or fails (in CI) when a peer program is missing.
func requirePeer(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed: CI must install it (.ci/run)", name)
	}
	t.Skipf("SKIPPING: %s is not installed; install it (apt-get install %s) to run this test", name, name)
	return ""
}

// proc is a process started by a test, with its output captured.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// syncBuffer collects a process's output and lets tests wait for lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProc starts bin with args and env, stopping it (by PID) when the
// test ends, and printing its output if the test failed.
func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", name, tail(p.out.String(), 60))
		}
	})
	return p
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitOutput waits until the process's output matches re and returns the
// first submatch (or the whole match).
func (p *proc) waitOutput(t *testing.T, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m[len(m)-1]
		}
		select {
		case <-p.done:
			if m := re.FindStringSubmatch(p.out.String()); m != nil {
				return m[len(m)-1]
			}
			t.Fatalf("%s exited before printing %v:\n%s", p.name, re, tail(p.out.String(), 40))
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %v within %v:\n%s", p.name, re, timeout, tail(p.out.String(), 40))
	return ""
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitListening waits until addr accepts TCP connections.
func waitListening(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listening on %s after %v", addr, timeout)
}

var linkRE = regexp.MustCompile(`(mirage://\S+)`)

// bridge is a running mirage-server.
type bridge struct {
	*proc
	addr  string
	state string
	link  string
}

// serveEach listens on a free loopback port until the test ends, runs
// handle on each connection it accepts in a goroutine of its own and
// closes the connection after; it returns the address.
func serveEach(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// startServer runs mirage-server on a free loopback port with a fresh
// state directory and extra flags, and waits for its link.
func startServer(t *testing.T, state string, args ...string) *bridge {
	t.Helper()
	if state == "" {
		state = t.TempDir()
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	all := append([]string{"-state", state, "-listen", addr, "-log-level", "debug"}, args...)
	p := startProc(t, "mirage-server", serverBin, nil, all...)
	l := p.waitOutput(t, linkRE, 20*time.Second)
	waitListening(t, addr, 10*time.Second)
	return &bridge{proc: p, addr: addr, state: state, link: l}
}

// localProxy is a running mirage-client's local proxy: its address and
// the credentials apps must give (empty with -auth none).
type localProxy struct {
	addr, user, pass string
}

// curlSOCKS returns curl's arguments to use the proxy as SOCKS5 with
// remote DNS, and curlHTTP as an HTTP proxy, with the credentials.
func (l localProxy) curlSOCKS() []string {
	return append([]string{"--socks5-hostname", l.addr}, l.curlAuth()...)
}

func (l localProxy) curlHTTP() []string {
	return append([]string{"--proxy", "http://" + l.addr}, l.curlAuth()...)
}

func (l localProxy) curlAuth() []string {
	if l.user == "" {
		return nil
	}
	return []string{"--proxy-user", l.user + ":" + l.pass}
}

// startClient runs mirage-client's local proxy for link, with a fresh
// state directory, and returns it once it listens. Unless args say
// otherwise (-auth), the proxy requires the credentials the client made
// on first run, which are read from its state directory as a user would
// copy them from its output.
func startClient(t *testing.T, link string, args ...string) (*proc, localProxy) {
	t.Helper()
	return startClientEnv(t, nil, link, args...)
}

// startClientEnv is startClient with env added to the client's
// environment (SSL_CERT_FILE: the roots a bridge's CA certificate chains
// to).
func startClientEnv(t *testing.T, env []string, link string, args ...string) (*proc, localProxy) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	state := t.TempDir()
	all := append([]string{"-listen", addr, "-state", state, "-log-level", "debug"}, args...)
	all = append(all, link)
	p := startProc(t, "mirage-client", clientBin, env, all...)
	waitListening(t, addr, 20*time.Second)
	lp := localProxy{addr: addr}
	if !slices.Contains(args, "-auth") {
		b, err := os.ReadFile(filepath.Join(state, "proxy-auth"))
		if err != nil {
			t.Fatalf("mirage-client made no credentials: %v", err)
		}
		user, pass, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
		if !ok {
			t.Fatalf("credentials file %q", b)
		}
		lp.user, lp.pass = user, pass
		// The tg:// link Telegram imports carries them.
		p.waitOutput(t, regexp.MustCompile(`tg://socks\?server=127\.0\.0\.1&port=\d+&user=`+user+`&pass=`+pass), 10*time.Second)
	}
	return p, lp
}

// runCmd runs a short command with a timeout and returns its output.
func runCmd(t *testing.T, timeout time.Duration, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// readLines returns the lines of r (for PT protocol output).
func readLines(r io.Reader) []string {
	var lines []string
	s := bufio.NewScanner(r)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	return lines
}
