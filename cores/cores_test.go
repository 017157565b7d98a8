package cores

import (
	"runtime"
	"testing"
)

// TestUse: Use sets the cores, 0 leaves them alone, and a $GOMAXPROCS
// the user set stays in charge.
func TestUse(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "")
	runtime.GOMAXPROCS(3)
	Use(1)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("Use(1) left %d cores", got)
	}
	Use(0)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("Use(0) changed the cores to %d; want them left alone", got)
	}
	Use(2)
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("Use(2) left %d cores", got)
	}
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	Use(1)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Fatalf("with GOMAXPROCS=3 set, Use(1) made it %d cores", got)
	}
}
