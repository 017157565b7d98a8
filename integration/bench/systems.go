//go:build linux

package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// procs tracks every process the harness starts, so that exactly those are
// killed at the end, whatever happened.
type procs struct {
	mu   sync.Mutex
	list []*exec.Cmd
}

// start runs name with args, and with env added to the harness's own
// environment. Its stdout is returned for reading; the caller must keep
// reading it (or drain it) so the child never blocks on a full pipe.
func (p *procs) start(env []string, name string, args ...string) (*exec.Cmd, *bufio.Reader, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.mu.Lock()
	p.list = append(p.list, cmd)
	p.mu.Unlock()
	return cmd, bufio.NewReader(out), nil
}

// kill ends one process started by start (nil: nothing to do).
func (p *procs) kill(cmd *exec.Cmd) {
	if cmd == nil {
		return
	}
	p.mu.Lock()
	i := slices.Index(p.list, cmd)
	if i >= 0 {
		p.list = slices.Delete(p.list, i, i+1)
	}
	p.mu.Unlock()
	if i >= 0 {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

func (p *procs) killAll() {
	p.mu.Lock()
	list := p.list
	p.list = nil
	p.mu.Unlock()
	for _, c := range list {
		c.Process.Kill()
		c.Wait()
	}
}

// awaitLine reads lines from r until one starts with want (any line when
// want is empty) and returns it trimmed, giving up after d or at a line
// reporting a pluggable-transport setup error (ENV-ERROR, VERSION-ERROR,
// CMETHOD-ERROR, SMETHOD-ERROR). It then keeps draining r in the
// background, so the child never blocks on a full pipe.
func awaitLine(r *bufio.Reader, want string, d time.Duration) (string, error) {
	type answer struct {
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		for {
			s, err := r.ReadString('\n')
			s = strings.TrimSpace(s)
			if err != nil {
				ch <- answer{err: fmt.Errorf("output ended before %q: %w", want, err)}
				return
			}
			if f := strings.Fields(s); len(f) > 0 && strings.HasSuffix(f[0], "-ERROR") {
				ch <- answer{err: errors.New(s)}
				break
			}
			if strings.HasPrefix(s, want) {
				ch <- answer{line: s}
				break
			}
		}
		io.Copy(io.Discard, r)
	}()
	select {
	case a := <-ch:
		return a.line, a.err
	case <-time.After(d):
		return "", fmt.Errorf("no %q line within %v", want, d)
	}
}

func drain(r *bufio.Reader) { go io.Copy(io.Discard, r) }

// waitListening polls addr until it accepts a TCP connection.
func waitListening(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening within %v: %w", addr, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// system is one proxy under test.
type system struct {
	name           string
	socks          string
	client, server *exec.Cmd // nil when not a separate process
	delay          *delayLine
	// startClient starts another client process that will accept SOCKS5
	// on listen (obfs4proxy picks its own port) and returns the address it
	// will accept on, which may not accept yet. nil: the client cannot be
	// restarted (an extra proxy).
	startClient func(listen string) (*exec.Cmd, string, error)
	// bridge and auth, when bridge is set, make every stream's SOCKS5
	// CONNECT go to bridge with auth carrying the pluggable transport's
	// arguments (obfs4proxy's client); the server side then takes every
	// stream to the load target.
	bridge string
	auth   *socksAuth
	// faceCert and faceKey are the PEM files of a Mirage bridge's
	// self-signed face, once it wrote them.
	faceCert, faceKey string
}

// connect does the SOCKS5 handshake for a stream to target on c, a fresh
// connection to one of the system's SOCKS ports.
func (s *system) connect(c net.Conn, target string) error {
	if s.bridge != "" {
		return socksConnect(c, s.bridge, s.auth)
	}
	return socksConnect(c, target, nil)
}

// dial opens a stream to target through the system's SOCKS port.
func (s *system) dial(target string, deadline time.Time) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", s.socks, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	c.SetDeadline(deadline)
	if err := s.connect(c, target); err != nil {
		c.Close()
		return nil, fmt.Errorf("via %s: %w", s.socks, err)
	}
	return c, nil
}

type env struct {
	o      options
	procs  *procs
	tmp    string
	self   string
	target string // bulk and ping server
	notes  []string
}

// note adds a line to the notes under the tables, once.
func (e *env) note(s string) {
	if !slices.Contains(e.notes, s) {
		e.notes = append(e.notes, s)
	}
}

// setup starts every system; with delayed set, each one's client side
// reaches its server side through its own delay line. timed says the
// systems are for the timed figures (not the idle streams'), whose notes
// say what shapes them.
func (e *env) setup(delayed, timed bool) []*system {
	var out []*system
	add := func(s *system, err error) {
		if err == nil && s.startClient != nil {
			err = e.launch(s)
		}
		if err != nil {
			e.note(fmt.Sprintf("%s%s: skipped: %v", s.name, suffix(delayed), err))
			e.stop(s)
			return
		}
		out = append(out, s)
	}
	// The bridge starts first: the TLS relay then presents the bridge's
	// own certificate, so that both sign handshakes with the same kind of
	// key. A bridge's self-signed face draws RSA 2048 or P-256 (like the
	// appliances it imitates), and an RSA signature costs 0.6 ms on this
	// kind of machine, a P-256 one 0.05: with keys of their own, the
	// cold-start figure compared key types, not transports.
	mirage, mirageErr := e.mirage(delayed)
	if mirage.faceKey != "" && timed {
		e.note(fmt.Sprintf("the Go crypto/tls relay%s presents the Mirage bridge's own face certificate (%s), so both sign their handshakes with the same kind of key", suffix(delayed), keyKind(mirage.faceCert, mirage.faceKey)))
	}
	add(e.direct(delayed))
	add(e.tlsRelay(delayed, mirage.faceCert, mirage.faceKey))
	add(mirage, mirageErr)
	add(e.shadowsocks(delayed))
	add(e.obfs4(delayed))
	if !delayed {
		for _, x := range e.o.extra {
			out = append(out, &system{name: "extra " + x, socks: x})
		}
	} else if len(e.o.extra) > 0 {
		e.note("extra proxies are not measured through the delay line: their server side is not ours to put behind it")
	}
	return out
}

// launch starts the system's long-running client and waits until it
// accepts.
func (e *env) launch(s *system) error {
	listen, err := freePort()
	if err != nil {
		return err
	}
	if s.client, s.socks, err = s.startClient(listen); err != nil {
		return err
	}
	return waitListening(s.socks, 20*time.Second)
}

// stop ends the system's processes and its delay line.
func (e *env) stop(s *system) {
	e.procs.kill(s.client)
	e.procs.kill(s.server)
	s.client, s.server = nil, nil
	if s.delay != nil {
		s.delay.Close()
	}
}

func suffix(delayed bool) string {
	if delayed {
		return " (delay line)"
	}
	return ""
}

// via returns addr, or a new delay line in front of it for a delayed run.
func (e *env) via(s *system, addr string, delayed bool) (string, error) {
	if !delayed {
		return addr, nil
	}
	d, err := newDelayLine(addr, e.o.rtt, e.o.rate, e.o.handshake)
	if err != nil {
		return "", err
	}
	s.delay = d
	return d.Addr(), nil
}

// role returns a startClient that runs this binary as a baseline child.
func (e *env) role(role, upstream string) func(string) (*exec.Cmd, string, error) {
	return func(listen string) (*exec.Cmd, string, error) {
		cmd, out, err := e.procs.start(nil, e.self, "-role", role, "-upstream", upstream, "-listen", listen)
		if err != nil {
			return nil, "", err
		}
		drain(out)
		return cmd, listen, nil
	}
}

func (e *env) direct(delayed bool) (*system, error) {
	s := &system{name: "direct TCP (SOCKS5 relay)"}
	up := ""
	if delayed {
		var err error
		if up, err = e.via(s, e.target, true); err != nil {
			return s, err
		}
	}
	s.startClient = e.role("direct", up)
	return s, nil
}

// tlsRelay starts the Go crypto/tls relay's server side, presenting the
// certificate and key in the PEM files certFile and keyFile, or one of its
// own when they are empty.
func (e *env) tlsRelay(delayed bool, certFile, keyFile string) (*system, error) {
	s := &system{name: "Go crypto/tls relay"}
	args := []string{"-role", "tls-server"}
	if certFile != "" && keyFile != "" {
		args = append(args, "-cert", certFile, "-key", keyFile)
	}
	cmd, out, err := e.procs.start(nil, e.self, args...)
	if err != nil {
		return s, err
	}
	s.server = cmd
	srv, err := awaitLine(out, "", 10*time.Second)
	if err != nil {
		return s, fmt.Errorf("tls-server child: %w", err)
	}
	if srv, err = e.via(s, srv, delayed); err != nil {
		return s, err
	}
	s.startClient = e.role("tls-front", srv)
	return s, nil
}

func (e *env) mirage(delayed bool) (*system, error) {
	s := &system{name: "mirage"}
	bin := filepath.Join(e.tmp, "bin")
	srvState, err := os.MkdirTemp(e.tmp, "mirage-server-")
	if err != nil {
		return s, err
	}
	cliState, err := os.MkdirTemp(e.tmp, "mirage-client-")
	if err != nil {
		return s, err
	}
	listen, err := freePort()
	if err != nil {
		return s, err
	}
	var out *bufio.Reader
	if s.server, out, err = e.procs.start(nil, filepath.Join(bin, "mirage-server"), "-state", srvState, "-listen", listen, "-allow-private", "-log-level", "warn"); err != nil {
		return s, err
	}
	drain(out)
	var raw []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		raw, err = os.ReadFile(filepath.Join(srvState, "client.link"))
		if err == nil && len(raw) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("mirage-server wrote no %s/client.link within 30s", srvState)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := waitListening(listen, 10*time.Second); err != nil {
		return s, err
	}
	// The face's certificate is written before the link (server/selfsigned.go).
	cert, key := filepath.Join(srvState, "selfsigned-cert.pem"), filepath.Join(srvState, "selfsigned-key.pem")
	if _, err := os.Stat(key); err == nil {
		s.faceCert, s.faceKey = cert, key
	}
	lnk := strings.TrimSpace(string(raw))
	addr, err := e.via(s, listen, delayed)
	if err != nil {
		return s, err
	}
	// The client must reach the bridge at the delay line's address (or
	// the loopback listen address when the server put another in the
	// link), so host:port in the link is replaced.
	u, err := url.Parse(lnk)
	if err != nil {
		return s, fmt.Errorf("mirage link %q: %w", lnk, err)
	}
	u.Host = addr
	s.startClient = func(listen string) (*exec.Cmd, string, error) {
		// Level error: the warning that -auth none lets other apps in
		// would be printed by every client the cold-start figure starts.
		cmd, out, err := e.procs.start(nil, filepath.Join(bin, "mirage-client"), "-listen", listen, "-auth", "none", "-state", cliState, "-log-level", "error", u.String())
		if err != nil {
			return nil, "", err
		}
		drain(out)
		return cmd, listen, nil
	}
	return s, nil
}

func (e *env) shadowsocks(delayed bool) (*system, error) {
	s := &system{name: "shadowsocks-libev aes-256-gcm"}
	if _, err := exec.LookPath("ss-server"); err != nil {
		return s, errors.New("ss-server not installed (Debian: shadowsocks-libev; try -install)")
	}
	if _, err := exec.LookPath("ss-local"); err != nil {
		return s, errors.New("ss-local not installed")
	}
	srv, err := freePort()
	if err != nil {
		return s, err
	}
	sh, sp, _ := net.SplitHostPort(srv)
	const pw = "mirage-bench"
	var out *bufio.Reader
	if s.server, out, err = e.procs.start(nil, "ss-server", "-s", sh, "-p", sp, "-k", pw, "-m", "aes-256-gcm"); err != nil {
		return s, err
	}
	drain(out)
	if err := waitListening(srv, 10*time.Second); err != nil {
		return s, err
	}
	addr, err := e.via(s, srv, delayed)
	if err != nil {
		return s, err
	}
	ah, ap, _ := net.SplitHostPort(addr)
	s.startClient = func(listen string) (*exec.Cmd, string, error) {
		lh, lp, _ := net.SplitHostPort(listen)
		cmd, out, err := e.procs.start(nil, "ss-local", "-s", ah, "-p", ap, "-b", lh, "-l", lp, "-k", pw, "-m", "aes-256-gcm")
		if err != nil {
			return nil, "", err
		}
		drain(out)
		return cmd, listen, nil
	}
	return s, nil
}

// obfs4 runs obfs4proxy as a Tor pluggable transport in managed mode (pt
// spec, "Managed proxy environment variables"), server and client, with
// iat-mode=0 (no inter-arrival-time obfuscation, as obfs4 bridges run by
// default). The server forwards every connection to its ORPort, here the
// load target itself; the client's SOCKS5 port is told the bridge address
// in CONNECT and the bridge's cert= and iat-mode= in the user name and
// password, as tor does.
func (e *env) obfs4(delayed bool) (*system, error) {
	s := &system{name: "obfs4proxy (iat-mode=0)"}
	bin, err := exec.LookPath("obfs4proxy")
	if err != nil {
		return s, errors.New("obfs4proxy not installed (Debian: obfs4proxy; try -install)")
	}
	srvState, err := os.MkdirTemp(e.tmp, "obfs4-server-")
	if err != nil {
		return s, err
	}
	cliState, err := os.MkdirTemp(e.tmp, "obfs4-client-")
	if err != nil {
		return s, err
	}
	listen, err := freePort()
	if err != nil {
		return s, err
	}
	cmd, out, err := e.procs.start([]string{
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION=" + srvState,
		"TOR_PT_SERVER_TRANSPORTS=obfs4",
		"TOR_PT_SERVER_BINDADDR=obfs4-" + listen,
		"TOR_PT_SERVER_TRANSPORT_OPTIONS=obfs4:iat-mode=0",
		"TOR_PT_ORPORT=" + e.target,
	}, bin)
	if err != nil {
		return s, err
	}
	s.server = cmd
	if _, err := awaitLine(out, "SMETHODS DONE", 20*time.Second); err != nil {
		return s, fmt.Errorf("obfs4proxy server: %w", err)
	}
	args, err := obfs4BridgeArgs(filepath.Join(srvState, "obfs4_bridgeline.txt"))
	if err != nil {
		return s, err
	}
	if s.bridge, err = e.via(s, listen, delayed); err != nil {
		return s, err
	}
	// pt spec, "Pluggable transport client per-connection arguments":
	// all of an argument list shorter than 255 bytes goes in the user
	// name, and the password is a single NUL.
	s.auth = &socksAuth{user: args, pass: "\x00"}
	if len(args) >= 255 {
		s.auth = &socksAuth{user: args[:255], pass: args[255:]}
	}
	s.startClient = func(string) (*exec.Cmd, string, error) {
		cmd, out, err := e.procs.start([]string{
			"TOR_PT_MANAGED_TRANSPORT_VER=1",
			"TOR_PT_STATE_LOCATION=" + cliState,
			"TOR_PT_CLIENT_TRANSPORTS=obfs4",
		}, bin)
		if err != nil {
			return nil, "", err
		}
		line, err := awaitLine(out, "CMETHOD obfs4 ", 20*time.Second)
		if err != nil {
			e.procs.kill(cmd)
			return nil, "", fmt.Errorf("obfs4proxy client: %w", err)
		}
		// CMETHOD obfs4 socks5 127.0.0.1:PORT
		f := strings.Fields(line)
		if len(f) < 4 || f[2] != "socks5" {
			e.procs.kill(cmd)
			return nil, "", fmt.Errorf("obfs4proxy client: unexpected %q", line)
		}
		return cmd, f[3], nil
	}
	return s, nil
}

// obfs4BridgeArgs reads the bridge line obfs4proxy's server wrote to its
// state directory and returns its arguments in the pt spec's SOCKS form,
// "cert=...;iat-mode=0".
func obfs4BridgeArgs(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("obfs4proxy bridge line: %w", err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "Bridge" || f[1] != "obfs4" {
			continue
		}
		var args []string
		for _, a := range f[2:] {
			k, v, ok := strings.Cut(a, "=")
			if ok {
				args = append(args, ptEscape(k)+"="+ptEscape(v))
			}
		}
		if len(args) == 0 {
			break
		}
		return strings.Join(args, ";"), nil
	}
	return "", fmt.Errorf("no obfs4 Bridge line with arguments in %s", path)
}

// ptEscape backslash-escapes the pt spec's argument separators.
func ptEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `;`, `\;`, `=`, `\=`).Replace(s)
}

// keyKind names the kind of key in the PEM files, as the notes print it.
func keyKind(certFile, keyFile string) string {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	switch k := c.PrivateKey.(type) {
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PrivateKey:
		return "ECDSA " + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", c.PrivateKey)
}
