// Command bench measures Mirage against baselines on loopback, in one run
// with interleaved rounds (issue 9): direct TCP through a plain SOCKS5 relay,
// a Go crypto/tls relay with one TLS connection per stream, Mirage's own
// binaries, shadowsocks-libev when installed, and any extra SOCKS5 proxy.
// Every system is reached through its own local SOCKS5 port. With -rtt it
// measures again through a user-space delay line placed between each
// system's client side and server side.
//
//	go run ./integration/bench -size 16MiB -rounds 1 -rtt 60ms -rate 100mbit -png bench.png
//
// Everything listens on 127.0.0.1 only. It is not part of go test.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	rounds  int
	size    int64
	streams int
	samples int
	rtt     time.Duration
	rate    float64 // bits per second, 0: unlimited
	png     string
	extra   []string
	install bool
	upload  bool
	// handshake: the delay line charges each new TCP connection its
	// handshake round trip.
	handshake bool
}

func main() {
	var role, upstream, size, rate, extra string
	o := options{}
	flag.StringVar(&role, "role", "", "internal: run as a baseline relay child (direct, tls-front, tls-server)")
	flag.StringVar(&upstream, "upstream", "", "internal: the role's upstream address")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds; figures are medians over rounds")
	flag.StringVar(&size, "size", "64MiB", "bytes per stream for the bulk figures (KiB, MiB, GiB suffixes)")
	flag.IntVar(&o.streams, "streams", 8, "streams of the parallel bulk figure")
	flag.IntVar(&o.samples, "samples", 200, "new streams per round for the TTFB figure")
	flag.DurationVar(&o.rtt, "rtt", 0, "also measure through a delay line with this round-trip time (e.g. 60ms)")
	flag.StringVar(&rate, "rate", "0", "delay line rate (e.g. 100mbit, 1gbit; 0: unlimited)")
	flag.StringVar(&o.png, "png", "bench.png", "write the bar chart here (empty: none)")
	flag.StringVar(&extra, "extra", "", "comma-separated HOST:PORT of more SOCKS5 proxies to measure (loopback run only)")
	flag.BoolVar(&o.install, "install", false, "first try apt-get install -y shadowsocks-libev obfs4proxy")
	flag.BoolVar(&o.upload, "upload", true, "also measure uploads")
	flag.BoolVar(&o.handshake, "rtt-handshake", true, "the delay line delays each new connection's first client bytes by one RTT, as a TCP handshake would (false: connections open for free, as in issue 9's first measurements)")
	flag.Parse()
	if role != "" {
		if err := runRole(role, upstream); err != nil {
			fmt.Fprintln(os.Stderr, "bench role:", err)
			os.Exit(1)
		}
		return
	}
	var err error
	if o.size, err = parseSize(size); err != nil {
		fatal(err)
	}
	if o.rate, err = parseRate(rate); err != nil {
		fatal(err)
	}
	if o.rounds < 1 || o.streams < 1 || o.samples < 1 {
		fatal(errors.New("-rounds, -streams and -samples must be at least 1"))
	}
	for _, e := range strings.Split(extra, ",") {
		if e = strings.TrimSpace(e); e != "" {
			if _, _, err := net.SplitHostPort(e); err != nil {
				fatal(fmt.Errorf("-extra %q: want HOST:PORT", e))
			}
			o.extra = append(o.extra, e)
		}
	}
	if err := run(o); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("-size %q: want a positive size such as 64MiB", s)
	}
	return n * mult, nil
}

func parseRate(s string) (float64, error) {
	s = strings.ToLower(s)
	mult := 1.0
	for _, u := range []struct {
		suf string
		m   float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("-rate %q: want e.g. 100mbit", s)
	}
	return f * mult, nil
}

// procs tracks every process the harness starts, so that exactly those are
// killed at the end, whatever happened.
type procs struct {
	mu   sync.Mutex
	list []*exec.Cmd
}

func (p *procs) start(name string, args ...string) (*exec.Cmd, *bufio.Reader, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
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

func (p *procs) killAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.list {
		c.Process.Kill()
		c.Wait()
	}
	p.list = nil
}

// firstLine reads one line from r, giving up after d.
func firstLine(r *bufio.Reader, d time.Duration) (string, error) {
	ch := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := r.ReadString('\n')
		if err != nil {
			errc <- err
			return
		}
		ch <- strings.TrimSpace(s)
		io.Copy(io.Discard, r) // keep the child from blocking on a full pipe
	}()
	select {
	case s := <-ch:
		return s, nil
	case err := <-errc:
		return "", err
	case <-time.After(d):
		return "", fmt.Errorf("no output within %v", d)
	}
}

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
}

type env struct {
	o      options
	procs  *procs
	tmp    string
	self   string
	target string // bulk and ping server
	notes  []string
}

// setup starts every system; with delayed set, each one's client side
// reaches its server side through its own delay line.
func (e *env) setup(delayed bool) []*system {
	var out []*system
	add := func(s *system, err error) {
		if err != nil {
			e.notes = append(e.notes, fmt.Sprintf("%s%s: skipped: %v", s.name, suffix(delayed), err))
			return
		}
		out = append(out, s)
	}
	add(e.direct(delayed))
	add(e.tlsRelay(delayed))
	add(e.mirage(delayed))
	add(e.shadowsocks(delayed))
	e.notes = append(e.notes, "obfs4proxy"+suffix(delayed)+": skipped: it runs only under a Tor pluggable-transport harness (TOR_PT_* environment, CMETHOD parsing, SOCKS arguments for cert=), more than the ~40 lines budgeted")
	if !delayed {
		for _, x := range e.o.extra {
			out = append(out, &system{name: "extra " + x, socks: x})
		}
	} else if len(e.o.extra) > 0 {
		e.notes = append(e.notes, "extra proxies are not measured through the delay line: their server side is not ours to put behind it")
	}
	return out
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

func (e *env) child(role, upstream string) (*exec.Cmd, string, error) {
	cmd, out, err := e.procs.start(e.self, "-role", role, "-upstream", upstream)
	if err != nil {
		return nil, "", err
	}
	addr, err := firstLine(out, 10*time.Second)
	if err != nil {
		return nil, "", fmt.Errorf("%s child: %w", role, err)
	}
	return cmd, addr, nil
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
	var err error
	s.client, s.socks, err = e.child("direct", up)
	return s, err
}

func (e *env) tlsRelay(delayed bool) (*system, error) {
	s := &system{name: "Go crypto/tls relay"}
	var err error
	var srv string
	if s.server, srv, err = e.child("tls-server", ""); err != nil {
		return s, err
	}
	if srv, err = e.via(s, srv, delayed); err != nil {
		return s, err
	}
	s.client, s.socks, err = e.child("tls-front", srv)
	return s, err
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
	if s.server, out, err = e.procs.start(filepath.Join(bin, "mirage-server"), "-state", srvState, "-listen", listen, "-allow-private", "-log-level", "warn"); err != nil {
		return s, err
	}
	go io.Copy(io.Discard, out)
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
	if s.socks, err = freePort(); err != nil {
		return s, err
	}
	if s.client, out, err = e.procs.start(filepath.Join(bin, "mirage-client"), "-listen", s.socks, "-auth", "none", "-state", cliState, "-log-level", "warn", u.String()); err != nil {
		return s, err
	}
	go io.Copy(io.Discard, out)
	return s, waitListening(s.socks, 20*time.Second)
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
	if s.server, out, err = e.procs.start("ss-server", "-s", sh, "-p", sp, "-k", pw, "-m", "aes-256-gcm"); err != nil {
		return s, err
	}
	go io.Copy(io.Discard, out)
	if err := waitListening(srv, 10*time.Second); err != nil {
		return s, err
	}
	addr, err := e.via(s, srv, delayed)
	if err != nil {
		return s, err
	}
	ah, ap, _ := net.SplitHostPort(addr)
	if s.socks, err = freePort(); err != nil {
		return s, err
	}
	lh, lp, _ := net.SplitHostPort(s.socks)
	if s.client, out, err = e.procs.start("ss-local", "-s", ah, "-p", ap, "-b", lh, "-l", lp, "-k", pw, "-m", "aes-256-gcm"); err != nil {
		return s, err
	}
	go io.Copy(io.Discard, out)
	return s, waitListening(s.socks, 10*time.Second)
}

// targetServer serves the load: 'D'+uint64 n: send n bytes; 'U'+uint64 n:
// read n bytes then answer one byte; 'P': answer one byte at once (the
// TTFB probe, "a 1-byte request answered with 1 byte").
func targetServer() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	buf := make([]byte, 256<<10) // shared read-only source of bytes
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Minute))
				var cmd [1]byte
				if _, err := io.ReadFull(c, cmd[:]); err != nil {
					return
				}
				if cmd[0] == 'P' {
					c.Write([]byte{'p'})
					return
				}
				var nb [8]byte
				if _, err := io.ReadFull(c, nb[:]); err != nil {
					return
				}
				n := int64(binary.BigEndian.Uint64(nb[:]))
				switch cmd[0] {
				case 'D':
					for n > 0 {
						k := min(n, int64(len(buf)))
						if _, err := c.Write(buf[:k]); err != nil {
							return
						}
						n -= k
					}
					// Wait for the client's close so our FIN is not
					// racing the last bytes through every relay.
					io.Copy(io.Discard, c)
				case 'U':
					if _, err := io.CopyN(io.Discard, c, n); err != nil {
						return
					}
					c.Write([]byte{'u'})
				}
			}()
		}
	}()
	return ln.Addr().String(), nil
}

// result holds one round's figures for one system.
type result struct {
	down1, down8, up1, up8 float64 // MiB/s
	ttfb50, ttfb99         float64 // ms
	cpuCli, cpuSrv         float64 // s/GiB, -1 when unknown
	rssCli, rssSrv         float64 // MiB, -1 when unknown
	err                    error
}

// bulk moves n bytes on each of k streams at once and returns MiB/s of the
// aggregate.
func bulk(s *system, target string, k int, n int64, down bool, limit time.Duration) (float64, error) {
	deadline := time.Now().Add(limit)
	start := time.Now()
	errc := make(chan error, k)
	for i := 0; i < k; i++ {
		go func() {
			c, err := socksDial(s.socks, target, deadline)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			req := []byte{'U'}
			if down {
				req[0] = 'D'
			}
			req = binary.BigEndian.AppendUint64(req, uint64(n))
			if _, err := c.Write(req); err != nil {
				errc <- err
				return
			}
			if down {
				got, err := io.CopyN(io.Discard, c, n)
				if err != nil {
					err = fmt.Errorf("download: %d of %d bytes: %w", got, n, err)
				}
				errc <- err
				return
			}
			if _, err := io.CopyN(c, zeros{}, n); err != nil {
				errc <- fmt.Errorf("upload: %w", err)
				return
			}
			var ack [1]byte
			_, err = io.ReadFull(c, ack[:])
			errc <- err
		}()
	}
	var first error
	for i := 0; i < k; i++ {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return 0, first
	}
	return float64(int64(k)*n) / (1 << 20) / time.Since(start).Seconds(), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// ttfb opens samples new streams one after another on the system's warm
// session and returns p50 and p99 of the time from the start of the SOCKS
// handshake to the answer's first byte, in ms.
func ttfb(s *system, target string, samples int) (float64, float64, error) {
	probe := func() (time.Duration, error) {
		start := time.Now()
		c, err := socksDial(s.socks, target, start.Add(30*time.Second))
		if err != nil {
			return 0, err
		}
		defer c.Close()
		if _, err := c.Write([]byte{'P'}); err != nil {
			return 0, err
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, fmt.Errorf("ping answer: %w", err)
		}
		return time.Since(start), nil
	}
	if _, err := probe(); err != nil { // warm the session
		return 0, 0, err
	}
	var d []float64
	for i := 0; i < samples; i++ {
		t, err := probe()
		if err != nil {
			return 0, 0, err
		}
		d = append(d, float64(t)/float64(time.Millisecond))
	}
	sort.Float64s(d)
	return pct(d, 0.5), pct(d, 0.99), nil
}

func pct(sorted []float64, p float64) float64 {
	i := int(p*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

// cpuSeconds is utime+stime of pid from /proc/PID/stat.
func cpuSeconds(cmd *exec.Cmd) float64 {
	if cmd == nil {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may hold spaces; fields after ")" are
	// fixed: utime and stime are the 12th and 13th after it.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// peakRSS is VmHWM in MiB.
func peakRSS(cmd *exec.Cmd) float64 {
	if cmd == nil {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return -1
}

func (e *env) measure(s *system) result {
	var r result
	limit := 10 * time.Minute
	c0, s0 := cpuSeconds(s.client), cpuSeconds(s.server)
	var moved int64
	var err error
	if r.down1, err = bulk(s, e.target, 1, e.o.size, true, limit); err != nil {
		return result{err: fmt.Errorf("1 stream down: %w", err)}
	}
	if r.down8, err = bulk(s, e.target, e.o.streams, e.o.size, true, limit); err != nil {
		return result{err: fmt.Errorf("%d streams down: %w", e.o.streams, err)}
	}
	moved += int64(1+e.o.streams) * e.o.size
	if e.o.upload {
		if r.up1, err = bulk(s, e.target, 1, e.o.size, false, limit); err != nil {
			return result{err: fmt.Errorf("1 stream up: %w", err)}
		}
		if r.up8, err = bulk(s, e.target, e.o.streams, e.o.size, false, limit); err != nil {
			return result{err: fmt.Errorf("%d streams up: %w", e.o.streams, err)}
		}
		moved += int64(1+e.o.streams) * e.o.size
	}
	gib := float64(moved) / (1 << 30)
	r.cpuCli, r.cpuSrv = -1, -1
	if c1 := cpuSeconds(s.client); c0 >= 0 && c1 >= 0 {
		r.cpuCli = (c1 - c0) / gib
	}
	if s1 := cpuSeconds(s.server); s0 >= 0 && s1 >= 0 {
		r.cpuSrv = (s1 - s0) / gib
	}
	r.rssCli, r.rssSrv = peakRSS(s.client), peakRSS(s.server)
	if r.ttfb50, r.ttfb99, err = ttfb(s, e.target, e.o.samples); err != nil {
		return result{err: fmt.Errorf("TTFB: %w", err)}
	}
	return r
}

func run(o options) error {
	e := &env{o: o, procs: &procs{}}
	defer e.procs.killAll()
	// An interrupted run still ends the processes it started.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		e.procs.killAll()
		fmt.Fprintln(os.Stderr, "bench: stopped by", s)
		os.Exit(1)
	}()
	var err error
	if e.tmp, err = os.MkdirTemp("", "mirage-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(e.tmp)
	if e.self, err = os.Executable(); err != nil {
		return err
	}
	if o.install {
		// One attempt, bounded; a failure only means those systems are
		// skipped with a note.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "shadowsocks-libev", "obfs4proxy")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			e.notes = append(e.notes, fmt.Sprintf("apt-get install failed (%v): %s", err, lastLine(string(out))))
		}
		cancel()
	}
	fmt.Fprintln(os.Stderr, "building ./server and ./client ...")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(e.tmp, "bin")+string(os.PathSeparator), "github.com/mirage-pt/mirage/server", "github.com/mirage-pt/mirage/client")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build of mirage-server and mirage-client (run from the module): %w", err)
	}
	// go build names the binaries after the package directories.
	for _, p := range [][2]string{{"server", "mirage-server"}, {"client", "mirage-client"}} {
		if err := os.Rename(filepath.Join(e.tmp, "bin", p[0]), filepath.Join(e.tmp, "bin", p[1])); err != nil {
			return err
		}
	}
	if e.target, err = targetServer(); err != nil {
		return err
	}
	fmt.Printf("# Mirage benchmark, %s, %d CPUs, %d round(s) interleaved, %s per stream, %d streams, %d TTFB samples per round; medians over rounds\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), o.rounds, humanSize(o.size), o.streams, o.samples)
	var tables []table
	passes := []bool{false}
	if o.rtt > 0 {
		passes = append(passes, true)
	}
	for _, delayed := range passes {
		systems := e.setup(delayed)
		res := make([][]result, len(systems))
		for round := 0; round < o.rounds; round++ {
			for i, s := range systems {
				fmt.Fprintf(os.Stderr, "round %d/%d%s: %s ...\n", round+1, o.rounds, suffix(delayed), s.name)
				res[i] = append(res[i], e.measure(s))
			}
		}
		title := "Loopback"
		if delayed {
			title = fmt.Sprintf("Delay line: %v RTT, %s, one link per system shared by all its connections", o.rtt, humanRate(o.rate))
			if o.handshake {
				title += ", each new TCP connection pays its handshake RTT"
			} else {
				title += ", TCP handshakes free (-rtt-handshake=false)"
			}
		}
		t := summarize(title, systems, res)
		tables = append(tables, t)
		fmt.Println(t.markdown(o))
		for _, s := range systems {
			if s.delay != nil {
				s.delay.Close()
			}
		}
		e.procs.killAll() // each pass starts its own processes
	}
	fmt.Println("Notes:")
	fmt.Println("- CPU is utime+stime from /proc/PID/stat over the bulk transfers, per GiB moved; RSS is VmHWM after the bulk transfers. The direct and Go TLS relays run as child processes of the harness (the bench binary re-executed), so their figures exclude the load generator; direct TCP has no server side.")
	fmt.Println("- TTFB: SOCKS5 greeting + CONNECT (waiting for each answer, as applications do) + 1-byte request until the 1-byte answer, on a warm session.")
	if o.rtt > 0 {
		fmt.Println("- Delay line: a user-space TCP relay per system between its client side and server side (direct TCP: between the relay and the target), adding RTT/2 each way behind one rate-limited serializer per direction shared by all the system's connections; its queue holds 5 ms of link time per connection, and it never drops. It terminates TCP on both sides and holds up to 64 MiB in flight per direction and connection, so TCP's own window, slow start and loss recovery never see the delay: it measures the round trips and windows of each system's own protocol (handshakes, stream windows), not TCP congestion control.")
	}
	fmt.Println("- Ratios are to direct TCP and to the Go TLS relay of the same run; throughput ratio > 1 is faster, TTFB/CPU ratio < 1 is better.")
	for _, n := range e.notes {
		fmt.Println("-", n)
	}
	if o.png != "" {
		if err := writeChart(o.png, tables, o.streams); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		fmt.Fprintln(os.Stderr, "chart written to", o.png)
	}
	return nil
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

func humanSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

func humanRate(r float64) string {
	if r == 0 {
		return "unlimited rate"
	}
	return fmt.Sprintf("%g Mbit/s", r/1e6)
}
