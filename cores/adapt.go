package cores

import (
	"math"
	"runtime"
	"time"
)

// Why a bridge adapts its cores instead of taking them all: each time a
// goroutine wakes another while a core is idle, Go's scheduler wakes a
// thread for that core too, which finds nothing to run, spins and sleeps
// again. A bridge's bytes pass between goroutines at every turn (a
// destination's reader, the carrier's flusher), so the fewer bytes each
// turn carries, the more those wake-ups cost: behind a 200 Mbit/s link,
// where the flusher writes 2.5 ms of the link at a time, the bridge spent
// 3.3 times the CPU per GiB of a plain TLS relay on two cores, and a
// third less on one; on loopback, one core cost 10-15% less per GiB and
// moved as many bytes (8 streams: 438 MiB/s against 415), and on a faster
// machine 20-25% less and more bytes (8 streams up: 770-880 MiB/s against
// 660-680, the bridge busy 0.6 of its one core against 0.67 of two). But
// a bridge for many users needs every core. So it runs on one until that
// one is nearly full (upLoad), on every core as soon as it is, and on
// fewer again once its load has stayed low for a while.
const (
	// adaptInterval is how often the load is measured.
	adaptInterval = 100 * time.Millisecond
	// adaptQuiet is how long the load must stay low before cores are
	// given back: a burst of handshakes, or a pause between two
	// downloads, does not flip the count back and forth.
	adaptQuiet = 3 * time.Second
	// upLoad: a process busier than this share of its cores gets every
	// core. It is high because a core that is not full has room: moving
	// to a second one early (at 0.6 of one, as first chosen) only made
	// the same bytes cost more. downLoad: cores are given back down to
	// the number that the busiest interval of the last adaptQuiet would
	// have kept below this share of them. The gap between the two is the
	// hysteresis: on fewer cores the same traffic costs less, so a load
	// that sent the count down does not send it up again.
	upLoad   = 0.9
	downLoad = 0.5
)

// Adapt lets the Go runtime run goroutines on as many cores as the
// process's load needs: one until it uses nearly all of one core,
// every core (the runtime's default) as soon as it needs more, and fewer
// again once its load has stayed low for adaptQuiet. It does nothing
// where $GOMAXPROCS is set (an operator's explicit setting wins), where
// the runtime has one core anyway (it then follows a CPU limit raised
// later by itself), or where the process's CPU time cannot be read
// (Windows). The returned function stops the adaptation and gives
// the choice back to the runtime.
func Adapt() (stop func()) {
	most := runtime.GOMAXPROCS(0)
	if operatorChose() || most <= 1 {
		return func() {}
	}
	if _, ok := processCPU(); !ok {
		return func() {}
	}
	return adaptProcs(processCPU, runtimeProcs, most, adaptInterval, adaptQuiet)
}

// procs sets and reads a core count: the runtime's (runtimeProcs), or a
// test's.
type procs struct {
	// all sets every core: the runtime's default count, which the
	// runtime itself then keeps up with the process's CPU limit (a
	// container's quota, the affinity mask) as it changes. It returns
	// the count.
	all func() int
	// set sets n cores; the count then stays n whatever the limit.
	set func(n int)
	// read returns the count in force.
	read func() int
}

var runtimeProcs = procs{
	all: func() int {
		runtime.SetDefaultGOMAXPROCS()
		return runtime.GOMAXPROCS(0)
	},
	set:  func(n int) { runtime.GOMAXPROCS(n) },
	read: func() int { return runtime.GOMAXPROCS(0) },
}

// adaptProcs runs the adaptation with the process CPU clock cpu (seconds
// of CPU used so far), most cores at most, measuring every interval, on
// the core count p (runtimeProcs: the runtime's). "Every core" is the
// runtime's default, not the count most was at the start: a count set by
// number stops the runtime from following the CPU limit, so a bridge
// whose container was given more cores, or fewer, went on with the
// number it started with. While on every core, the count the runtime
// keeps is read back at each interval (the new limit); while on fewer,
// the limit is learnt when they are raised again.
func adaptProcs(cpu func() (time.Duration, bool), p procs, most int, interval, quiet time.Duration) (stop func()) {
	a := newAdapter(most, int(quiet/interval))
	p.set(a.cur)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		lastCPU, _ := cpu()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				used, ok := cpu()
				if !ok || now.Sub(last) <= 0 {
					continue
				}
				busy := float64(used-lastCPU) / float64(now.Sub(last))
				lastCPU, last = used, now
				if a.cur == a.most {
					a.resize(p.read())
				}
				if n, changed := a.step(busy); changed {
					if n == a.most {
						a.resize(p.all())
					} else {
						p.set(n)
					}
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		p.all()
	}
}

// adapter decides the number of cores from the measured load. It is the
// policy alone, apart from clocks and the runtime, so that tests can drive
// it.
type adapter struct {
	most, cur int
	recent    []float64 // the load of the last intervals, oldest first
	window    int       // how many intervals make adaptQuiet
}

func newAdapter(most, window int) *adapter {
	return &adapter{most: most, cur: 1, window: max(window, 1)}
}

// resize takes most as the number of every core: the count now, if the
// adapter is on every core, and otherwise its bound.
func (a *adapter) resize(most int) {
	most = max(most, 1)
	if a.cur == a.most || a.cur > most {
		a.cur = most
	}
	a.most = most
}

// step takes the load of the last interval, in cores busy (1.5: one and a
// half cores' worth of CPU time per second), and returns the number of
// cores to run on and whether it changed.
func (a *adapter) step(busy float64) (int, bool) {
	if busy > upLoad*float64(a.cur) && a.cur < a.most {
		a.cur, a.recent = a.most, a.recent[:0]
		return a.cur, true
	}
	a.recent = append(a.recent, busy)
	if len(a.recent) > a.window {
		a.recent = a.recent[1:]
	}
	if len(a.recent) < a.window || a.cur == 1 {
		return a.cur, false
	}
	peak := 0.0
	for _, b := range a.recent {
		peak = max(peak, b)
	}
	need := min(max(int(math.Ceil(peak/downLoad)), 1), a.most)
	if need >= a.cur {
		return a.cur, false
	}
	a.cur, a.recent = need, a.recent[:0]
	return a.cur, true
}
