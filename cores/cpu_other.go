//go:build !unix

package cores

import "time"

// processCPU cannot read the process's CPU time here: Adapt then leaves
// the cores to the runtime.
func processCPU() (time.Duration, bool) { return 0, false }
