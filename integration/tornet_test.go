//go:build linux

package integration_test

// A private Tor network on 127.0.0.1, built at test time: directory
// authorities with keys from tor-gencert, relays (one or more exits that
// may connect to 127.0.0.1), bridges and clients. Every tor runs with
// TestingTorNetwork and tor's shortest voting schedule, timed so that the
// first consensus comes 6–7 s after the authorities start.
//
// When the test runs as root the whole network lives in a network
// namespace of its own that holds nothing but lo: the exits, which need
// "ExitPolicy accept *:*" to be usable by microdescriptor clients,
// cannot reach anything outside it. Code that talks to the network
// (servers behind the exit, SOCKS clients) must therefore open its
// sockets with torNet.listen and torNet.dial, ports for torrc lines
// come from torNet.freePort, and any other process that must share the
// network (a cover web server, say) is started inside torNet.run; tor's
// pluggable transports inherit the namespace from tor. Without a
// namespace (not root, or torNetOptions.HostNetwork) every tor binds
// outgoing connections to 127.0.0.1 (OutboundBindAddress) and the same
// helpers use the host's loopback.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// torNetOptions shapes a private Tor network. The zero value gives three
// authorities and one exit.
type torNetOptions struct {
	Authorities int           // directory authorities (also relays); 0 means 3
	Relays      int           // non-exit relays besides the authorities
	Exits       int           // exit relays; 0 means 1
	HostNetwork bool          // run in the host's network namespace even as root
	Timeout     time.Duration // bound on each wait (network, bootstrap); 0 means 90 s
}

// torNet is a running private Tor network.
type torNet struct {
	tor      string        // path of the tor binary
	dir      string        // one directory per tor under it
	ns       *netns        // nil when running in the host namespace
	timeout  time.Duration // bound on each wait
	dirAuths []string      // DirAuthority lines for every torrc
	defaults string        // empty defaults torrc
	resolv   string        // empty resolv.conf for the exits

	authorities []*torNode
	relays      []*torNode // exits first, then middles

	mu    sync.Mutex
	names map[string]int // per-role counters for nicknames
}

// torNode is one running tor process.
type torNode struct {
	name    string
	dir     string // holds torrc and tor.log
	dataDir string // tor's DataDirectory
	log     *syncBuffer
	cmd     *exec.Cmd
	done    chan struct{}
}

// torBridge is a running bridge (BridgeRelay 1, no descriptor published).
type torBridge struct {
	*torNode
	fingerprint string // RSA identity, 40 hex digits
	orPort      int    // on 127.0.0.1
	extORPort   int    // on 127.0.0.1
}

// torClient is a running tor client using bridges.
type torClient struct {
	*torNode
	net       *torNet
	socksAddr string // 127.0.0.1:port
}

var (
	orListenerRE    = regexp.MustCompile(`Opened OR listener connection \(ready\) on 127\.0\.0\.1:(\d+)`)
	dirListenerRE   = regexp.MustCompile(`Opened Directory listener connection \(ready\) on 127\.0\.0\.1:(\d+)`)
	extORListenerRE = regexp.MustCompile(`Opened Extended OR listener connection \(ready\) on 127\.0\.0\.1:(\d+)`)
	socksListenerRE = regexp.MustCompile(`Opened Socks listener connection \(ready\) on (127\.0\.0\.1:\d+)`)
	bootstrappedRE  = regexp.MustCompile(`Bootstrapped 100%`)
	v3identRE       = regexp.MustCompile(`(?m)^fingerprint ([0-9A-F]{40})$`)
	fingerprintRE   = regexp.MustCompile(`^\S+ ([0-9A-F]{40})\s*$`)
)

// requireTor returns tor's path, failing in CI and skipping locally when
// tor (or tor-gencert) is not installed.
func requireTor(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping the private Tor network in -short mode")
	}
	tor, err := exec.LookPath("tor")
	if err == nil {
		_, err = exec.LookPath("tor-gencert")
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("tor and tor-gencert must be installed in CI (apt-get install tor): %v", err)
		}
		t.Skipf("SKIPPING: tor/tor-gencert not installed (apt-get install tor): %v", err)
	}
	return tor
}

// startTorNet starts authorities and relays and returns once every
// authority's consensus lists every relay as Running and every exit with
// the Exit flag. Everything is stopped when the test ends.
func startTorNet(t *testing.T, opts torNetOptions) *torNet {
	t.Helper()
	tor := requireTor(t)
	if opts.Authorities <= 0 {
		opts.Authorities = 3
	}
	if opts.Exits <= 0 {
		opts.Exits = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 90 * time.Second
	}
	start := time.Now()
	n := &torNet{tor: tor, dir: t.TempDir(), timeout: opts.Timeout, names: map[string]int{}}
	if !opts.HostNetwork && os.Geteuid() == 0 {
		ns, err := newNetns()
		if err != nil {
			t.Logf("tornet: no private network namespace (%v); using the host's loopback", err)
		} else {
			n.ns = ns
			t.Cleanup(ns.close) // registered first, so it runs after every tor is stopped
		}
	}
	n.defaults = filepath.Join(n.dir, "torrc-defaults")
	n.resolv = filepath.Join(n.dir, "resolv.conf")
	for _, f := range []string{n.defaults, n.resolv} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Authority keys: tor-gencert for the v3 identity, tor itself for the
	// relay identity. RSA key generation dominates, so run them together.
	type authKeys struct {
		name, dir, v3ident, fingerprint string
		orPort, dirPort                 int
		err                             error
	}
	auths := make([]*authKeys, opts.Authorities)
	ports := n.freePorts(t, 2*len(auths))
	var wg sync.WaitGroup
	for i := range auths {
		a := &authKeys{name: n.nickname("auth"), orPort: ports[2*i], dirPort: ports[2*i+1]}
		a.dir = filepath.Join(n.dir, a.name)
		auths[i] = a
		wg.Go(func() { a.v3ident, a.fingerprint, a.err = n.makeAuthorityKeys(a.dir, a.dirPort) })
	}
	wg.Wait()
	for _, a := range auths {
		if a.err != nil {
			t.Fatalf("authority keys for %s: %v", a.name, a.err)
		}
		n.dirAuths = append(n.dirAuths, fmt.Sprintf("DirAuthority %s orport=%d no-v2 v3ident=%s 127.0.0.1:%d %s",
			a.name, a.orPort, a.v3ident, a.dirPort, a.fingerprint))
	}
	t.Logf("tornet: %d authority keys in %v (namespace: %v)", len(auths), time.Since(start).Round(time.Millisecond), n.ns != nil)

	// Lines for every relay, authorities included; ORPorts are fixed only
	// where DirAuthority lines need them.
	relay := func(orPort string, lines ...string) []string {
		return append([]string{
			"ContactInfo tornet@example.invalid",
			"Address 127.0.0.1",
			"ORPort 127.0.0.1:" + orPort,
			"SocksPort 0",
			"AssumeReachable 1",
		}, lines...)
	}
	// Relays other than authorities are no directory caches: a bridge
	// that bootstraps right after the first consensus would otherwise ask
	// one that has no consensus or microdescriptors yet, get a 404 and
	// back off for 10 s.
	const noDirCache = "DirCache 0"
	// The first consensus is valid from the first voting-interval boundary
	// (every 10 s from midnight UTC, shifted by
	// TestingV3AuthVotingStartOffset) whose voting starts, 4 s before it,
	// after the authorities have come up. Left at a whole 10 s it makes
	// the network wait for the wall clock, 10–20 s, and sometimes the
	// relays miss the first vote. Place it 6–7 s from now instead: voting
	// starts 2–3 s after the relays, which upload their descriptors in
	// well under a second.
	voteOffset := time.Now().Add(7*time.Second).Unix() % 10
	for _, a := range auths {
		n.authorities = append(n.authorities, n.startTor(t, a.name, relay(strconv.Itoa(a.orPort),
			"AuthoritativeDirectory 1",
			"V3AuthoritativeDirectory 1",
			fmt.Sprintf("DirPort 127.0.0.1:%d", a.dirPort),
			"AuthDirMaxServersPerAddr 0",
			"V3AuthVotingInterval 10",
			"V3AuthVoteDelay 2",
			"V3AuthDistDelay 2",
			"TestingV3AuthInitialVotingInterval 10",
			"TestingV3AuthInitialVoteDelay 2",
			"TestingV3AuthInitialDistDelay 2",
			fmt.Sprintf("TestingV3AuthVotingStartOffset %d", voteOffset),
			"TestingDirAuthVoteExit *",
			"TestingDirAuthVoteGuard *",
			"ExitRelay 0",
			"ExitPolicy reject *:*",
		)))
	}
	// The authorities' ports were free a moment ago (freePorts), and are
	// no longer held: a relay that binds 127.0.0.1:auto before an
	// authority has bound its own could be given one of them by the
	// kernel. It happened once in CI: an exit took auth0's ORPort, and
	// auth0 exited ("Address already in use").
	for _, a := range n.authorities {
		a.waitLog(t, dirListenerRE, n.timeout)
	}
	var exits, all []string
	for range opts.Exits {
		name := n.nickname("exit")
		exits = append(exits, name)
		// accept *:* because a policy for 127.0.0.0/8 alone summarises to
		// "reject 1-65535" for microdescriptor clients; the namespace (or
		// OutboundBindAddress) keeps the traffic on loopback. No DNS.
		n.relays = append(n.relays, n.startTor(t, name, relay("auto",
			noDirCache,
			"ExitRelay 1",
			"ExitPolicyRejectPrivate 0",
			"ExitPolicy accept *:*",
			"RefuseUnknownExits 0",
			"ServerDNSDetectHijacking 0",
			"ServerDNSTestAddresses",
			"ServerDNSResolvConfFile "+n.resolv,
		)))
	}
	for range opts.Relays {
		n.relays = append(n.relays, n.startTor(t, n.nickname("relay"), relay("auto",
			noDirCache,
			"ExitRelay 0",
			"ExitPolicy reject *:*",
		)))
	}
	for _, r := range append(append([]*torNode{}, n.authorities...), n.relays...) {
		all = append(all, r.name)
	}

	// Wait until every authority serves a consensus that has them all: a
	// bridge that asks an authority without one gets a 404 and backs off
	// for 10 s or more.
	deadline := time.Now().Add(n.timeout)
	for {
		missing := ""
		for _, a := range n.authorities {
			flags := consensusFlags(filepath.Join(a.dataDir, "cached-microdesc-consensus"))
			for _, name := range all {
				if missing == "" && !flags[name]["Running"] {
					missing = fmt.Sprintf("%s not Running in %s's consensus", name, a.name)
				}
			}
			for _, name := range exits {
				if missing == "" && !flags[name]["Exit"] {
					missing = fmt.Sprintf("%s not Exit in %s's consensus", name, a.name)
				}
			}
		}
		if missing == "" {
			break
		}
		n.checkAlive(t)
		if time.Now().After(deadline) {
			t.Fatalf("tornet: no consensus with every relay within %v (%s)", n.timeout, missing)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("tornet: network up in %v: %d authorities, %d relays (%d exits)",
		time.Since(start).Round(time.Millisecond), len(n.authorities), len(n.relays), len(exits))
	return n
}

// consensusFlags reads a consensus file and returns each router's flags
// by nickname (nil when the file is missing or unreadable).
func consensusFlags(path string) map[string]map[string]bool {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	flags := map[string]map[string]bool{}
	var router string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		switch {
		case len(fields) >= 2 && fields[0] == "r":
			router = fields[1]
		case len(fields) >= 1 && fields[0] == "s" && router != "":
			flags[router] = map[string]bool{}
			for _, fl := range fields[1:] {
				flags[router][fl] = true
			}
		}
	}
	return flags
}

// makeAuthorityKeys creates an authority's v3 keys (tor-gencert) and relay
// identity (tor --list-fingerprint) under dir/data/keys and returns the v3
// identity and relay fingerprints.
func (n *torNet) makeAuthorityKeys(dir string, dirPort int) (v3ident, fingerprint string, err error) {
	data := filepath.Join(dir, "data")
	keys := filepath.Join(data, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	gencert := exec.CommandContext(ctx, "tor-gencert", "--create-identity-key", "-m", "12",
		"-a", fmt.Sprintf("127.0.0.1:%d", dirPort),
		"-i", filepath.Join(keys, "authority_identity_key"),
		"-s", filepath.Join(keys, "authority_signing_key"),
		"-c", filepath.Join(keys, "authority_certificate"),
		"--passphrase-fd", "0")
	gencert.Stdin = strings.NewReader("\n")
	if out, err := gencert.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("tor-gencert: %v\n%s", err, out)
	}
	cert, err := os.ReadFile(filepath.Join(keys, "authority_certificate"))
	if err != nil {
		return "", "", err
	}
	m := v3identRE.FindSubmatch(cert)
	if m == nil {
		return "", "", errors.New("no fingerprint in authority_certificate")
	}
	list := exec.CommandContext(ctx, n.tor, "--quiet", "--defaults-torrc", n.defaults, "-f", n.defaults,
		"--list-fingerprint", "--DataDirectory", data, "--ORPort", "1")
	if out, err := list.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("tor --list-fingerprint: %v\n%s", err, out)
	}
	fp, err := readFingerprint(data)
	return string(m[1]), fp, err
}

// readFingerprint reads the RSA identity fingerprint tor writes to
// DataDirectory/fingerprint.
func readFingerprint(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "fingerprint"))
	if err != nil {
		return "", err
	}
	m := fingerprintRE.FindStringSubmatch(string(b))
	if m == nil {
		return "", fmt.Errorf("unexpected fingerprint file %q", b)
	}
	return m[1], nil
}

// nickname returns a fresh nickname for a role: auth0, auth1, exit0, …
func (n *torNet) nickname(role string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := n.names[role]
	n.names[role]++
	return fmt.Sprintf("%s%d", role, i)
}

// startTor writes a torrc (common lines, then lines) for a tor called name
// and starts it. The tor is stopped by PID and its log tail printed when
// the test ends (the tail only if the test failed).
func (n *torNet) startTor(t *testing.T, name string, lines []string) *torNode {
	t.Helper()
	dir := filepath.Join(n.dir, name)
	node := &torNode{name: name, dir: dir, dataDir: filepath.Join(dir, "data"), log: &syncBuffer{}, done: make(chan struct{})}
	if err := os.MkdirAll(node.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	common := []string{
		"TestingTorNetwork 1",
		"DataDirectory " + node.dataDir,
		"Nickname " + name,
		"Log notice stdout",
		"SafeLogging 0",
		"LogTimeGranularity 1",
		"ShutdownWaitLength 0",
		"OutboundBindAddress 127.0.0.1",
		"PathsNeededToBuildCircuits 0.25",
		fmt.Sprintf("__OwningControllerProcess %d", os.Getpid()),
	}
	common = append(common, n.dirAuths...)
	torrc := filepath.Join(dir, "torrc")
	text := strings.Join(append(common, lines...), "\n") + "\n"
	if err := os.WriteFile(torrc, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "tor.log"))
	if err != nil {
		t.Fatal(err)
	}
	node.cmd = exec.Command(n.tor, "--defaults-torrc", n.defaults, "-f", torrc)
	node.cmd.Stdout = io.MultiWriter(logFile, node.log)
	node.cmd.Stderr = node.cmd.Stdout
	n.run(func() { err = node.cmd.Start() })
	if err != nil {
		logFile.Close()
		t.Fatalf("starting tor %s: %v", name, err)
	}
	go func() {
		node.cmd.Wait()
		logFile.Close()
		close(node.done)
	}()
	t.Cleanup(func() {
		node.stop()
		if t.Failed() {
			t.Logf("---- tail of tor %s log (%s) ----\n%s", name, dir, tail(node.log.String(), 40))
		}
	})
	return node
}

// stop ends the tor: SIGTERM (tor exits at once), SIGKILL after 5 s.
func (node *torNode) stop() {
	select {
	case <-node.done:
		return
	default:
	}
	node.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-node.done:
	case <-time.After(5 * time.Second):
		node.cmd.Process.Kill()
		<-node.done
	}
}

// exited reports whether the tor has exited.
func (node *torNode) exited() bool {
	select {
	case <-node.done:
		return true
	default:
		return false
	}
}

// waitLog waits until the tor's log matches re and returns the last
// submatch (or the whole match); it fails the test if the tor exits or
// the timeout passes first.
func (node *torNode) waitLog(t *testing.T, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(node.log.String()); m != nil {
			return m[len(m)-1]
		}
		if node.exited() {
			t.Fatalf("tor %s exited before logging %v", node.name, re)
		}
		if time.Now().After(deadline) {
			t.Fatalf("tor %s did not log %v within %v", node.name, re, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkAlive fails the test if an authority or relay has exited.
func (n *torNet) checkAlive(t *testing.T) {
	t.Helper()
	for _, node := range append(append([]*torNode{}, n.authorities...), n.relays...) {
		if node.exited() {
			t.Fatalf("tor %s exited", node.name)
		}
	}
}

// startBridge starts a bridge (BridgeRelay 1, PublishServerDescriptor 0,
// BridgeDistribution none, ORPort and ExtORPort on 127.0.0.1:auto) with
// extra torrc lines, such as ServerTransportPlugin,
// ServerTransportListenAddr and ServerTransportOptions, and waits until
// it has bootstrapped. A pluggable transport's state directory is
// dataDir/pt_state.
func (n *torNet) startBridge(t *testing.T, extra []string) *torBridge {
	t.Helper()
	start := time.Now()
	lines := []string{
		"BridgeRelay 1",
		"PublishServerDescriptor 0",
		"BridgeDistribution none",
		"ContactInfo tornet@example.invalid",
		"Address 127.0.0.1",
		"ORPort 127.0.0.1:auto",
		"ExtORPort 127.0.0.1:auto",
		"SocksPort 0",
		"AssumeReachable 1",
		"ExitRelay 0",
		"ExitPolicy reject *:*",
	}
	b := &torBridge{torNode: n.startTor(t, n.nickname("bridge"), append(lines, extra...))}
	b.orPort, _ = strconv.Atoi(b.waitLog(t, orListenerRE, n.timeout))
	b.extORPort, _ = strconv.Atoi(b.waitLog(t, extORListenerRE, n.timeout))
	b.waitLog(t, bootstrappedRE, n.timeout)
	fp, err := readFingerprint(b.dataDir)
	if err != nil {
		t.Fatalf("bridge %s: %v", b.name, err)
	}
	b.fingerprint = fp
	t.Logf("tornet: bridge %s bootstrapped in %v (ORPort %d, fingerprint %s)",
		b.name, time.Since(start).Round(time.Millisecond), b.orPort, fp)
	return b
}

// bridgeLine is the vanilla Bridge line for b.
func (b *torBridge) bridgeLine() string {
	return fmt.Sprintf("Bridge 127.0.0.1:%d %s", b.orPort, b.fingerprint)
}

// startClient starts a tor client with UseBridges 1, the given Bridge
// lines and extra torrc lines (e.g. ClientTransportPlugin), a SocksPort on
// 127.0.0.1:auto, and waits until it has bootstrapped.
func (n *torNet) startClient(t *testing.T, bridgeLines []string, extra []string) *torClient {
	t.Helper()
	start := time.Now()
	lines := append([]string{"UseBridges 1", "SocksPort 127.0.0.1:auto"}, bridgeLines...)
	c := &torClient{torNode: n.startTor(t, n.nickname("client"), append(lines, extra...)), net: n}
	c.socksAddr = c.waitLog(t, socksListenerRE, n.timeout)
	c.waitLog(t, bootstrappedRE, n.timeout)
	t.Logf("tornet: client %s bootstrapped in %v (SOCKS %s)", c.name, time.Since(start).Round(time.Millisecond), c.socksAddr)
	return c
}

// dial opens a stream through the client to target (an IPv4 literal and
// port: the exits have no DNS) with SOCKS5 CONNECT.
func (c *torClient) dial(ctx context.Context, target string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host).To4()
	port, err := strconv.ParseUint(portStr, 10, 16)
	if ip == nil || err != nil {
		return nil, fmt.Errorf("socks: %q is not an IPv4 address and port", target)
	}
	conn, err := c.net.dial(ctx, c.socksAddr)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	fail := func(err error) (net.Conn, error) {
		conn.Close()
		return nil, fmt.Errorf("socks %s via %s: %w", target, c.socksAddr, err)
	}
	// No authentication; CONNECT to an IPv4 address.
	req := []byte{5, 1, 0, 5, 1, 0, 1}
	req = append(req, ip...)
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	if _, err := conn.Write(req); err != nil {
		return fail(err)
	}
	var rep [12]byte // method choice (2) + reply with an IPv4 bound address (10)
	if _, err := io.ReadFull(conn, rep[:]); err != nil {
		return fail(err)
	}
	if rep[0] != 5 || rep[1] != 0 {
		return fail(fmt.Errorf("method reply % x", rep[:2]))
	}
	if rep[3] != 0 {
		return fail(fmt.Errorf("CONNECT reply code %d", rep[3]))
	}
	if rep[5] != 1 {
		return fail(fmt.Errorf("unexpected bound address type %d", rep[5]))
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// httpClient returns an HTTP client whose connections go through c.
func (c *torClient) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return c.dial(ctx, addr)
		},
		DisableKeepAlives: true,
	}}
}

// run calls f on a thread in the network's namespace (or directly when
// there is none). Sockets and processes created by f (exec.Cmd.Start)
// belong to that namespace for good. f must not call t.Fatal or
// runtime.Goexit: it would take the namespace's thread with it.
func (n *torNet) run(f func()) {
	if n.ns == nil {
		f()
		return
	}
	n.ns.do(f)
}

// listen opens a TCP listener on 127.0.0.1:0 in the network's namespace,
// closed when the test ends.
func (n *torNet) listen(t *testing.T) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	n.run(func() { ln, err = net.Listen("tcp", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial opens a TCP connection to addr in the network's namespace.
func (n *torNet) dial(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	var err error
	n.run(func() {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
	})
	return conn, err
}

// freePort returns a port on 127.0.0.1 that was free a moment ago in the
// network's namespace, for torrc lines that need a fixed port (e.g.
// ServerTransportListenAddr).
func (n *torNet) freePort(t *testing.T) int {
	t.Helper()
	return n.freePorts(t, 1)[0]
}

// freePorts returns k distinct ports like freePort.
func (n *torNet) freePorts(t *testing.T, k int) []int {
	t.Helper()
	var ports []int
	var err error
	n.run(func() {
		for range k {
			var ln net.Listener
			if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				return
			}
			defer ln.Close() // held until all are chosen, so they differ
			ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// netns is a network namespace holding only lo, entered by one locked OS
// thread that runs functions on request. The thread never leaves the
// namespace: when the namespace closes, its goroutine returns while
// still locked and the Go runtime discards the thread. (The runtime
// starts new threads from a clean template thread, so none inherits the
// namespace by accident.)
type netns struct {
	calls chan func()
	quit  chan struct{}
	once  sync.Once
}

func newNetns() (*netns, error) {
	ns := &netns{calls: make(chan func()), quit: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see netns
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- fmt.Errorf("bringing lo up: %w", err)
			return
		}
		errc <- nil
		for {
			select {
			case f := <-ns.calls:
				f()
			case <-ns.quit:
				return
			}
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return ns, nil
}

// do runs f on the namespace's thread and waits for it.
func (ns *netns) do(f func()) {
	done := make(chan struct{})
	select {
	case ns.calls <- func() {
		defer close(done)
		f()
	}:
	case <-ns.quit:
		panic("tornet: network namespace used after the test ended")
	}
	<-done
}

func (ns *netns) close() { ns.once.Do(func() { close(ns.quit) }) }

// loopbackUp sets IFF_UP on lo in the calling thread's namespace, which
// also gives it 127.0.0.1/8.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name[16], then flags (short)
	copy(ifr[:], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return e
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return err
	}
	flags := binary.NativeEndian.Uint16(ifr[16:]) | syscall.IFF_UP
	binary.NativeEndian.PutUint16(ifr[16:], flags)
	return ioctl(syscall.SIOCSIFFLAGS)
}
