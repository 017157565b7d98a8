//go:build linux

package main

import (
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// coldStart is one cold start of the system: a client process started
// afresh (its server side keeps running, as a bridge does), and a stream
// opened as soon as its SOCKS port accepts, as an app waiting for the
// client would. It is timed from just before the process is started to the
// first byte of the answer to the stream's 1-byte request, so it holds the
// client's start, its TCP connection(s) and handshakes (TLS, obfs4's, or
// Mirage's session, which mirage-client begins at start without waiting for
// an app) and the stream's own round trip. ready is the part until the
// SOCKS port accepted, which on loopback is most of it.
func (e *env) coldStart(s *system) (total, ready time.Duration, err error) {
	listen, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	cmd, addr, err := s.startClient(listen)
	if err != nil {
		return 0, 0, err
	}
	defer e.procs.kill(cmd)
	var c net.Conn
	for {
		// A refused connect on loopback returns at once; retrying every
		// 0.2 ms finds the port within that of its opening.
		if c, err = net.DialTimeout("tcp", addr, time.Until(deadline)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("fresh client's port %s: %w", addr, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	ready = time.Since(start)
	defer c.Close()
	c.SetDeadline(deadline)
	if err := s.connect(c, e.target); err != nil {
		return 0, 0, fmt.Errorf("fresh client: %w", err)
	}
	if _, err := c.Write([]byte{'P'}); err != nil {
		return 0, 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, 0, fmt.Errorf("fresh client: ping answer: %w", err)
	}
	return time.Since(start), ready, nil
}

// coldStarts runs n cold starts and returns the medians of total and ready
// in ms.
func (e *env) coldStarts(s *system, n int) (float64, float64, error) {
	var tot, rdy []float64
	for i := 0; i < n; i++ {
		t, r, err := e.coldStart(s)
		if err != nil {
			return 0, 0, err
		}
		tot = append(tot, float64(t)/float64(time.Millisecond))
		rdy = append(rdy, float64(r)/float64(time.Millisecond))
	}
	return median(tot), median(rdy), nil
}

// idleResult is the memory figure with many idle streams open.
type idleResult struct {
	hwmCli, hwmSrv float64 // MiB: VmHWM with the streams open, -1 when unknown
	perCli, perSrv float64 // KiB per stream: VmRSS growth over opening them, NaN when unknown
	err            error
}

// idleSettle is how long the streams sit idle before memory is read, so
// that what a process allocates after a stream's first exchange (buffers,
// timers, the bridge's side) is counted.
const idleSettle = time.Second

// idleStreams opens n streams through the system (at most 64 opening at a
// time), each confirmed end to end by the target's answer, holds them open
// and idle, and reads the memory of the client and server processes.
// Run on processes that have moved no bulk data yet, VmHWM is the peak of
// startup plus the streams.
func (e *env) idleStreams(s *system, n int) idleResult {
	r0c, r0s := procMiB(s.client, "VmRSS"), procMiB(s.server, "VmRSS")
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	deadline := time.Now().Add(5 * time.Minute)
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return first != nil
	}
	sem := make(chan struct{}, 64)
	for i := 0; i < n && !failed(); i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := s.dial(e.target, deadline)
			if err == nil {
				if _, err = c.Write([]byte{'I'}); err == nil {
					var b [1]byte
					_, err = io.ReadFull(c, b[:])
				}
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("idle stream %d of %d: %w", i+1, n, err)
				}
				mu.Unlock()
				return
			}
			c.SetDeadline(time.Time{})
			conns[i] = c
		}()
	}
	wg.Wait()
	if first != nil {
		return idleResult{err: first}
	}
	time.Sleep(idleSettle)
	r := idleResult{hwmCli: procMiB(s.client, "VmHWM"), hwmSrv: procMiB(s.server, "VmHWM"), perCli: math.NaN(), perSrv: math.NaN()}
	if r1 := procMiB(s.client, "VmRSS"); r0c >= 0 && r1 >= 0 {
		r.perCli = (r1 - r0c) * 1024 / float64(n)
	}
	if r1 := procMiB(s.server, "VmRSS"); r0s >= 0 && r1 >= 0 {
		r.perSrv = (r1 - r0s) * 1024 / float64(n)
	}
	return r
}

// procMiB reads a kB field of /proc/PID/status (VmRSS, VmHWM) in MiB, -1
// when unknown.
func procMiB(cmd *exec.Cmd, field string) float64 {
	if cmd == nil {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, err := strconv.ParseFloat(f[1], 64)
				if err == nil {
					return kb / 1024
				}
			}
		}
	}
	return -1
}

// cpuSeconds is utime+stime of the process from /proc/PID/stat, -1 when
// unknown.
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

// exited reports whether the process cmd started has ended (a zombie not
// yet reaped, as the harness reaps only in procs.kill, or gone).
func exited(cmd *exec.Cmd) bool {
	if cmd == nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// machineBusySeconds returns the CPU time the whole machine has spent
// busy since boot, every process and the kernel's interrupt work
// included (/proc/stat: user, nice, system, irq, softirq; not idle,
// iowait or steal), or -1 where there is no /proc/stat.
func machineBusySeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return -1
	}
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return -1
		}
		busy += v
	}
	return busy / 100 // USER_HZ
}

func pct(sorted []float64, p float64) float64 {
	i := int(p*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

// idleDuring runs f and returns its figure and error with the cores the
// whole machine left unused while it ran: its cores less its busy time
// (machineBusySeconds) per second, or -1 where /proc/stat is missing. A
// transfer that leaves cores idle while every process of it has work
// waits on itself (a stall between its processes), not on the CPU.
func idleDuring(f func() (float64, error)) (float64, float64, error) {
	m0, t0 := machineBusySeconds(), time.Now()
	x, err := f()
	m1, elapsed := machineBusySeconds(), time.Since(t0).Seconds()
	if m0 < 0 || m1 < 0 || elapsed <= 0 {
		return x, -1, err
	}
	return x, max(float64(runtime.NumCPU())-(m1-m0)/elapsed, 0), err
}
