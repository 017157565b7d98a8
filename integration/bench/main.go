//go:build linux

// Command bench measures Mirage against baselines on loopback, in one run
// with interleaved rounds (issue 9): direct TCP through a plain SOCKS5 relay,
// a Go crypto/tls relay with one TLS connection per stream, Mirage's own
// binaries, shadowsocks-libev and obfs4proxy (as a Tor pluggable transport
// in managed mode) when installed, and any extra SOCKS5 proxy. Every system
// is reached through its own local SOCKS5 port. Figures: bulk throughput of
// 1 and N streams each way, TTFB of a new stream on a warm session, cold
// start (a freshly started client's first stream), CPU per GiB and peak RSS
// of each side from /proc, and RSS with 1,000 idle streams. With -rtt it
// measures again through a user-space delay line placed between each
// system's client side and server side, which also counts what each
// system puts on the wire (its handshakes, framing and padding) per byte
// and per new stream. Output: Markdown tables with ratios
// to the direct and TLS baselines of the same run, and a PNG chart.
//
//	go run ./integration/bench -size 16MiB -rounds 1 -rtt 60ms -rate 100mbit -png bench.png
//
// Everything listens on 127.0.0.1 only. It is not part of go test.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
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
	cold      int // cold starts per round
	idle      int // idle streams of the memory figure
}

func main() {
	var role, upstream, listen, certFile, keyFile, size, rate, extra string
	o := options{}
	flag.StringVar(&role, "role", "", "internal: run as a baseline relay child (direct, tls-front, tls-server)")
	flag.StringVar(&upstream, "upstream", "", "internal: the role's upstream address")
	flag.StringVar(&listen, "listen", "", "internal: the role's listen address (default: a free loopback port)")
	flag.StringVar(&certFile, "cert", "", "internal: the tls-server role's certificate (PEM; default: a P-256 one of its own)")
	flag.StringVar(&keyFile, "key", "", "internal: the tls-server role's private key (PEM), with -cert")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds; figures are medians over rounds")
	flag.StringVar(&size, "size", "64MiB", "bytes per stream for the bulk figures (KiB, MiB, GiB suffixes)")
	flag.IntVar(&o.streams, "streams", 8, "streams of the parallel bulk figure")
	flag.IntVar(&o.samples, "samples", 200, "new streams per round for the TTFB figure")
	flag.IntVar(&o.cold, "cold", 5, "cold starts (a freshly started client's first stream) per round")
	flag.IntVar(&o.idle, "idle", 1000, "idle streams held open for the memory figure (0: none)")
	flag.DurationVar(&o.rtt, "rtt", 0, "also measure through a delay line with this round-trip time (e.g. 60ms)")
	flag.StringVar(&rate, "rate", "0", "delay line rate (e.g. 100mbit, 1gbit; 0: unlimited)")
	flag.StringVar(&o.png, "png", "bench.png", "write the bar chart here (empty: none)")
	flag.StringVar(&extra, "extra", "", "comma-separated HOST:PORT of more SOCKS5 proxies to measure (loopback run only)")
	flag.BoolVar(&o.install, "install", false, "first try apt-get install -y shadowsocks-libev obfs4proxy")
	flag.BoolVar(&o.upload, "upload", true, "also measure uploads")
	flag.BoolVar(&o.handshake, "rtt-handshake", true, "the delay line delays each new connection's first client bytes by one RTT, as a TCP handshake would (false: connections open for free, as in issue 9's first measurements)")
	flag.Parse()
	if role != "" {
		if err := runRole(role, upstream, listen, certFile, keyFile); err != nil {
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
	if o.rounds < 1 || o.streams < 1 || o.samples < 1 || o.cold < 1 {
		fatal(errors.New("-rounds, -streams, -samples and -cold must be at least 1"))
	}
	if o.idle < 0 || o.idle > 100000 {
		fatal(errors.New("-idle must be between 0 and 100000"))
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

// targetServer serves the load: 'D'+uint64 n: send n bytes; 'U'+uint64 n:
// read n bytes then answer one byte; 'P': answer one byte at once (the
// TTFB probe, "a 1-byte request answered with 1 byte"); 'I': answer one
// byte, then hold the connection open until the client closes it (the idle
// streams of the memory figure).
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
				switch cmd[0] {
				case 'P':
					c.Write([]byte{'p'})
					return
				case 'I':
					if _, err := c.Write([]byte{'i'}); err == nil {
						io.Copy(io.Discard, c)
					}
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
	loaded50               float64 // ms: TTFB p50 while a download runs
	cpuCli, cpuSrv         float64 // s/GiB, -1 when unknown
	cpuMachine             float64 // the whole machine's busy s/GiB, -1 when unknown
	// The cores the whole machine left unused during the N-stream
	// transfers, down and up (-1 when unknown).
	idleDown8, idleUp8 float64
	rssCli, rssSrv     float64 // MiB, -1 when unknown
	cold, coldReady    float64 // ms, -1 when not measured
	// On the delay line: the bytes on the wire, both ways, per byte
	// downloaded and uploaded in the bulk figures, and per new stream
	// of the TTFB figure (-1 when not measured).
	wireDown, wireUp, wireStream float64
	err                          error
}

// bulk moves n bytes on each of k streams at once and returns MiB/s of the
// aggregate.
func bulk(s *system, target string, k int, n int64, down bool, limit time.Duration) (float64, error) {
	deadline := time.Now().Add(limit)
	start := time.Now()
	errc := make(chan error, k)
	for i := 0; i < k; i++ {
		go func() {
			c, err := s.dial(target, deadline)
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
		c, err := s.dial(target, start.Add(30*time.Second))
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

// ttfbLoaded is ttfb's p50 while one endless download runs through the
// same system (another stream of its session, or a connection of its
// own, as the system does it): what a user waits for when they open
// something while a download fills the link. The download runs for
// settle first, to fill whatever queues it can.
func ttfbLoaded(s *system, target string, samples int, settle time.Duration) (float64, error) {
	c, err := s.dial(target, time.Now().Add(30*time.Second))
	if err != nil {
		return 0, err
	}
	if _, err := c.Write(binary.BigEndian.AppendUint64([]byte{'D'}, 1<<62)); err != nil {
		c.Close()
		return 0, err
	}
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(done)
	}()
	time.Sleep(settle)
	p50, _, err := ttfb(s, target, samples)
	c.Close()
	<-done
	return p50, err
}

func (e *env) measure(s *system) result {
	var r result
	r.idleDown8, r.idleUp8 = -1, -1
	limit := 10 * time.Minute
	c0, s0, m0 := cpuSeconds(s.client), cpuSeconds(s.server), machineBusySeconds()
	r.wireDown, r.wireUp, r.wireStream = -1, -1, -1
	// wire reads what crossed the delay line so far; per divides what
	// crossed since w0 by n.
	wire := func() int64 {
		if s.delay == nil {
			return -1
		}
		return s.delay.moved()
	}
	per := func(w0 int64, n int64) float64 {
		if w0 < 0 || n <= 0 {
			return -1
		}
		return float64(wire()-w0) / float64(n)
	}
	bulkBytes := int64(1+e.o.streams) * e.o.size
	w0 := wire()
	var moved int64
	var err error
	if r.down1, err = bulk(s, e.target, 1, e.o.size, true, limit); err != nil {
		return result{err: fmt.Errorf("1 stream down: %w", err)}
	}
	if r.down8, r.idleDown8, err = idleDuring(func() (float64, error) {
		return bulk(s, e.target, e.o.streams, e.o.size, true, limit)
	}); err != nil {
		return result{err: fmt.Errorf("%d streams down: %w", e.o.streams, err)}
	}
	moved += bulkBytes
	r.wireDown = per(w0, bulkBytes)
	if e.o.upload {
		w0 = wire()
		if r.up1, err = bulk(s, e.target, 1, e.o.size, false, limit); err != nil {
			return result{err: fmt.Errorf("1 stream up: %w", err)}
		}
		if r.up8, r.idleUp8, err = idleDuring(func() (float64, error) {
			return bulk(s, e.target, e.o.streams, e.o.size, false, limit)
		}); err != nil {
			return result{err: fmt.Errorf("%d streams up: %w", e.o.streams, err)}
		}
		moved += bulkBytes
		r.wireUp = per(w0, bulkBytes)
	}
	gib := float64(moved) / (1 << 30)
	r.cpuCli, r.cpuSrv = -1, -1
	if c1 := cpuSeconds(s.client); c0 >= 0 && c1 >= 0 {
		r.cpuCli = (c1 - c0) / gib
	}
	if s1 := cpuSeconds(s.server); s0 >= 0 && s1 >= 0 {
		r.cpuSrv = (s1 - s0) / gib
	}
	r.cpuMachine = -1
	if m1 := machineBusySeconds(); m0 >= 0 && m1 >= 0 {
		r.cpuMachine = (m1 - m0) / gib
	}
	r.rssCli, r.rssSrv = procMiB(s.client, "VmHWM"), procMiB(s.server, "VmHWM")
	w0 = wire()
	if r.ttfb50, r.ttfb99, err = ttfb(s, e.target, e.o.samples); err != nil {
		return result{err: fmt.Errorf("TTFB: %w", err)}
	}
	r.wireStream = per(w0, int64(e.o.samples+1)) // and the warm-up stream
	if r.loaded50, err = ttfbLoaded(s, e.target, max(e.o.samples/5, 5), 2*time.Second); err != nil {
		return result{err: fmt.Errorf("TTFB under load: %w", err)}
	}
	r.cold, r.coldReady = -1, -1
	if s.startClient != nil {
		// A failed cold start costs only its own figure.
		if r.cold, r.coldReady, err = e.coldStarts(s, e.o.cold); err != nil {
			r.cold, r.coldReady = -1, -1
			e.note(fmt.Sprintf("%s: cold start failed in a round: %v", s.name, err))
		}
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
	fmt.Fprintln(os.Stderr, "building ./server, ./client and the relays ...")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Every Go system is built as the README has users build
	// mirage-client: with CGO_ENABLED=0, a static binary. The relays
	// run as this harness re-executed, so it builds a copy of itself the
	// same way: a dynamically linked binary takes about a millisecond
	// longer to start (the loader, libc), which the cold start would
	// otherwise count for one side only.
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(e.tmp, "bin")+string(os.PathSeparator),
		"github.com/mirage-pt/mirage/server", "github.com/mirage-pt/mirage/client", "github.com/mirage-pt/mirage/integration/bench")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build of mirage-server, mirage-client and the relays (run from the module): %w", err)
	}
	e.self = filepath.Join(e.tmp, "bin", "bench")
	// go build names the binaries after the package directories.
	for _, p := range [][2]string{{"server", "mirage-server"}, {"client", "mirage-client"}} {
		if err := os.Rename(filepath.Join(e.tmp, "bin", p[0]), filepath.Join(e.tmp, "bin", p[1])); err != nil {
			return err
		}
	}
	if e.target, err = targetServer(); err != nil {
		return err
	}
	fmt.Printf("# Mirage benchmark, %s, %d CPUs, %d round(s) interleaved, %s per stream, %d streams, %d TTFB samples per round; medians over rounds\n\nLoad average at start: %s (other work on the machine shares its CPUs with every system alike, rounds being interleaved, but widens the spread).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), o.rounds, humanSize(o.size), o.streams, o.samples, loadAvg())
	var tables []table
	passes := []bool{false}
	if o.rtt > 0 {
		passes = append(passes, true)
	}
	for _, delayed := range passes {
		// The memory figure with idle streams runs on processes of its
		// own, started for it and moving nothing else, so that their peak
		// RSS is startup plus the streams, and the bulk figures' peak is
		// not the idle streams'.
		idle := map[string]idleResult{}
		if o.idle > 0 {
			for _, s := range e.setup(delayed, false) {
				if s.client != nil || s.server != nil {
					fmt.Fprintf(os.Stderr, "%d idle streams%s: %s ...\n", o.idle, suffix(delayed), s.name)
					idle[s.name] = e.idleStreams(s, o.idle)
				}
				e.stop(s)
			}
		}
		systems := e.setup(delayed, true)
		res := make([][]result, len(systems))
		for round := 0; round < o.rounds; round++ {
			for i, s := range systems {
				fmt.Fprintf(os.Stderr, "round %d/%d%s: %s ...\n", round+1, o.rounds, suffix(delayed), s.name)
				res[i] = append(res[i], e.measure(s))
				// A process that crashed shows only as failed or odd
				// figures (a bridge's panic once read as a failed cold
				// start): say so where it cannot be missed.
				for _, p := range []struct {
					role string
					cmd  *exec.Cmd
				}{{"client", s.client}, {"server", s.server}} {
					if exited(p.cmd) {
						e.note(fmt.Sprintf("%s%s: its %s process ended during round %d (its output, before the tables, says why): figures from then on are not its", s.name, suffix(delayed), p.role, round+1))
					}
				}
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
		t := summarize(title, systems, res, idle)
		t.wire = delayed
		tables = append(tables, t)
		fmt.Println(t.markdown(o))
		if bar := t.coldBar(delayRTT(o, delayed)); bar != "" {
			fmt.Println(bar)
			fmt.Println()
		}
		for _, s := range systems {
			e.stop(s)
		}
		e.procs.killAll() // each pass starts its own processes
	}
	fmt.Println("Load average at the end:", loadAvg())
	fmt.Println()
	fmt.Println("Notes:")
	fmt.Println("- CPU is utime+stime from /proc/PID/stat over the bulk transfers, per GiB moved; peak RSS after bulk is VmHWM after the bulk transfers. The direct and Go TLS relays run as child processes of the harness (a copy of the bench binary), so their figures exclude the load generator; direct TCP has no server side.")
	fmt.Println("- Machine CPU is the whole machine's busy time from /proc/stat (user, nice, system, irq, softirq) over the same transfers, per GiB: every process, the harness's own load generator (the same bytes for every system) and the kernel's packet work included. On loopback the kernel does a connection's receive work in whichever process is on the CPU when its packets arrive, so per-process figures can move cost from one process to another; the machine's cannot. Other work on the machine adds to it alike for every system, rounds being interleaved.")
	fmt.Printf("- Idle cores during %d streams: the machine's cores less its busy time per second (the same /proc/stat figures) while the %d-stream transfers ran, median over rounds. A system whose transfer is limited by the CPU leaves about none; one that leaves cores idle while its streams still have bytes to move is held by its processes waiting on one another (windows, bounds, wake-ups), not by the CPU.\n", o.streams, o.streams)
	fmt.Println("- Mirage and the relays are built from this module with CGO_ENABLED=0 (static binaries), as the README builds mirage-client; shadowsocks-libev and obfs4proxy are Debian's. Each runs with its own defaults: mirage-client on one core (its -procs 1), mirage-server on as many as its load needs (its -procs 0: one until that one is 90% busy, both above), the relays on every core.")
	fmt.Println("- TTFB under load: TTFB's p50 (a fifth of its samples) while one download runs through the same system, started 2 s before (for Mirage, another stream of the same session; for the others, a connection of its own). On loopback the download fills mirage-client's one core (-procs 1), and a Go process whose cores always have work polls the network only every 10 ms (the runtime's sysmon), so each step of the new stream (accept, SOCKS greeting, CONNECT, request) may wait up to that; a link slower than a core (the delay line) shows what users feel.")
	fmt.Println("- TTFB: SOCKS5 greeting + CONNECT (waiting for each answer, as applications do) + 1-byte request until the 1-byte answer, on a warm session (for systems with a connection per stream, a new connection and its handshake each time, as in use).")
	fmt.Printf("- Cold start: the client process is started afresh (the server side keeps running), a stream is opened as soon as its SOCKS port accepts (connect retried every 0.2 ms), and the time is from just before the process starts to the first byte of the answer to a 1-byte request: process start, TCP connection, handshakes (TLS; obfs4's; Mirage's session, which mirage-client begins as soon as it starts), and the stream's own round trip. \"client ready\" is the part until the SOCKS port accepted. Median of %d per round, then over rounds. Extra proxies have no cold start here: the harness cannot restart them.\n", o.cold)
	if o.idle > 0 {
		fmt.Printf("- Idle streams: on processes started for this figure alone (before any bulk data), %d streams are opened through the SOCKS port (64 at a time), each confirmed by a 1-byte answer from the target, then left idle for %v; peak RSS is then VmHWM (startup plus the streams), KiB per stream is the growth of VmRSS over opening them divided by %d. One sample per pass, not a median.\n", o.idle, idleSettle, o.idle)
	}
	if o.rtt > 0 {
		fmt.Println("- Delay line: a user-space TCP relay per system between its client side and server side (direct TCP: between the relay and the target), adding RTT/2 each way behind one rate-limited serializer per direction shared by all the system's connections; its queue holds 5 ms of link time per connection, and it never drops. It terminates TCP on both sides and holds up to 64 MiB in flight per direction and connection, so TCP's own window, slow start and loss recovery never see the delay: it measures the round trips and windows of each system's own protocol (handshakes, stream windows), not TCP congestion control.")
		fmt.Println("- Wire bytes (delay line only): the TCP payload that crossed the delay line, both ways, during the bulk downloads (or uploads) per byte they moved, and during the TTFB figure per new stream (its 1-byte request and answer, plus the warm-up stream). Direct TCP's figures are the data alone; each other system's excess is what it puts on the wire besides: handshakes (for systems with a connection per stream, one per stream), framing, acknowledgements and padding (Mirage pads its young streams' writes and bulk writes' last records: PROTOCOL.md §6.2).")
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

// loadAvg is the 1, 5 and 15 minute load averages from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// delayRTT is the round trip a pass adds (0 on loopback).
func delayRTT(o options, delayed bool) time.Duration {
	if delayed {
		return o.rtt
	}
	return 0
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
