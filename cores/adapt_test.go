package cores

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestAdapterPolicy walks the policy through a bridge's day: idle on one
// core, a download that needs more, a load that shrinks, and a burst that
// must not give cores back.
func TestAdapterPolicy(t *testing.T) {
	const window = 5
	a := newAdapter(4, window)
	steps := []struct {
		busy float64
		want int
		why  string
	}{
		{0.05, 1, "idle: one core"},
		{0.65, 1, "a core two-thirds busy has room: still one"},
		{0.85, 1, "below upLoad of one core: still one"},
		{0.95, 4, "above upLoad of one core: every core at once"},
		{1.2, 4, "the window is not full yet"},
		{1.2, 4, ""},
		{1.2, 4, ""},
		{1.2, 4, ""},
		{1.2, 3, "a full window whose peak 1.2 needs ceil(1.2/downLoad) = 3"},
		{0.4, 3, "a new window starts"},
		{0.4, 3, ""},
		{1.5, 3, "below upLoad of three cores"},
		{0.4, 3, ""},
		{0.4, 3, "a full window, but its peak 1.5 still needs 3"},
		{0.4, 3, ""},
		{0.4, 3, ""},
		{0.4, 1, "the peak left the window: 0.4 needs one"},
		{0.8, 1, "the same traffic on fewer cores (hysteresis): no flip back"},
		{2.0, 4, "a burst: every core"},
	}
	for i, s := range steps {
		got, changed := a.step(s.busy)
		if got != s.want {
			t.Fatalf("step %d (load %.2f): %d cores, want %d (%s)", i, s.busy, got, s.want, s.why)
		}
		if i > 0 && changed != (steps[i-1].want != s.want) {
			t.Fatalf("step %d: changed=%v, but the count went %d -> %d", i, changed, steps[i-1].want, s.want)
		}
	}
}

// fakeCPU is a process CPU clock that advances at a set number of cores.
type fakeCPU struct {
	mu    sync.Mutex
	cores float64
	acc   time.Duration
	at    time.Time
}

func (f *fakeCPU) read() (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if !f.at.IsZero() {
		f.acc += time.Duration(f.cores * float64(now.Sub(f.at)))
	}
	f.at = now
	return f.acc, true
}

func (f *fakeCPU) set(cores float64) {
	f.read()
	f.mu.Lock()
	f.cores = cores
	f.mu.Unlock()
}

// waitProcs waits until the runtime runs on want cores.
func waitProcs(t *testing.T, want int, why string) {
	t.Helper()
	waitCount(t, runtimeProcs.read, want, why)
}

// waitCount waits until count returns want cores.
func waitCount(t *testing.T, count func() int, want int, why string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for count() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d cores, want %d", why, count(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAdaptSetsTheRuntime: the adaptation moves the runtime's core count
// with the load its clock shows, every core being the runtime's default,
// and stop gives the choice back.
func TestAdaptSetsTheRuntime(t *testing.T) {
	defer runtime.SetDefaultGOMAXPROCS()
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	var clock fakeCPU
	stop := adaptProcs(clock.read, runtimeProcs, def, 10*time.Millisecond, 100*time.Millisecond)
	waitProcs(t, 1, "at start")
	clock.set(1.0)
	waitProcs(t, def, "busy all of one core")
	clock.set(0.05)
	waitProcs(t, 1, "idle again")
	stop()
	runtime.GOMAXPROCS(1)
	stop = adaptProcs(clock.read, runtimeProcs, 3, 10*time.Millisecond, 100*time.Millisecond)
	stop()
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("after stop the runtime runs on %d cores, want its default %d", got, def)
	}
}

// TestAdaptLeavesAnOperatorsChoice: with $GOMAXPROCS set, Adapt changes
// nothing.
func TestAdaptLeavesAnOperatorsChoice(t *testing.T) {
	defer runtime.SetDefaultGOMAXPROCS()
	t.Setenv("GOMAXPROCS", "2")
	runtime.GOMAXPROCS(2)
	stop := Adapt()
	time.Sleep(3 * adaptInterval)
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("with GOMAXPROCS=2 set, Adapt made it %d cores", got)
	}
	stop()
}

// fakeProcs is a core count with a CPU limit a test moves, as a
// container's quota moves when its owner resizes it: on the default
// (auto), the count follows the limit, as the runtime's does.
type fakeProcs struct {
	mu         sync.Mutex
	limit, cur int
	auto       bool
	pinned     [][2]int // the counts set by number, with the limit then
}

func (f *fakeProcs) procs() procs {
	return procs{
		all: func() int {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.auto, f.cur = true, f.limit
			return f.cur
		},
		set: func(n int) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.auto, f.cur = false, n
			f.pinned = append(f.pinned, [2]int{n, f.limit})
		},
		read: func() int {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.cur
		},
	}
}

func (f *fakeProcs) setLimit(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limit = n
	if f.auto {
		f.cur = n
	}
}

func (f *fakeProcs) wait(t *testing.T, want int, why string) {
	t.Helper()
	waitCount(t, f.procs().read, want, why)
}

// TestAdaptFollowsTheCPULimit: a bridge whose container is given more
// cores, or fewer, while it runs uses them: its "every core" is the
// runtime's default, which follows the limit, never a number it pinned.
// (Before, a busy bridge set the count it had found at its start, and
// setting a count stops the runtime from following the limit.)
func TestAdaptFollowsTheCPULimit(t *testing.T) {
	var clock fakeCPU
	f := &fakeProcs{limit: 2, cur: 2, auto: true}
	stop := adaptProcs(clock.read, f.procs(), 2, 10*time.Millisecond, 100*time.Millisecond)
	f.wait(t, 1, "idle at start")
	f.setLimit(4)
	clock.set(1.0)
	f.wait(t, 4, "busy, after the limit grew from 2 to 4 cores")
	f.setLimit(3)
	f.wait(t, 3, "on every core when the limit shrank to 3")
	clock.set(0.05)
	f.wait(t, 1, "idle again")
	clock.set(1.0)
	f.wait(t, 3, "busy again")
	stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pinned {
		if p[0] >= p[1] {
			t.Fatalf("the adaptation set %d cores by number under a limit of %d (counts and limits: %v): every core must be the default, which follows the limit", p[0], p[1], f.pinned)
		}
	}
	if !f.auto {
		t.Fatal("after stop the count is not the default")
	}
}
