// Package pt (import it as mpt) is the glue between Mirage's transport and
// Tor's pluggable-transport protocol, spoken through goptlib: it turns the
// environment tor sets into listeners and configs, reports CMETHOD and
// SMETHOD lines (and their errors), dials tor's ORPort through the
// ExtORPort, and ends when tor says so. In managed mode stdout belongs to
// this protocol: nothing here, and nothing the binaries do in managed mode,
// writes anything else to it.
package pt

import (
	"context"
	"io"
	"os"
)

// ManagedMode reports whether tor started this process as a managed
// pluggable transport.
func ManagedMode() bool { return os.Getenv("TOR_PT_MANAGED_TRANSPORT_VER") != "" }

// waitForExit blocks until ctx ends or, when tor asks for it with
// TOR_PT_EXIT_ON_STDIN_CLOSE=1, stdin closes (tor exiting or dying closes
// it). It returns what ended the wait. Signals are the caller's business:
// a library installs no signal handlers, so the binaries end ctx on
// SIGTERM and SIGINT (signal.NotifyContext) and an embedding program
// keeps its own.
func waitForExit(ctx context.Context, stdin io.Reader) string {
	stdinClosed := make(chan struct{})
	if os.Getenv("TOR_PT_EXIT_ON_STDIN_CLOSE") == "1" && stdin != nil {
		go func() {
			io.Copy(io.Discard, stdin)
			close(stdinClosed)
		}()
	}
	select {
	case <-ctx.Done():
		if cause := context.Cause(ctx); cause != nil && cause != context.Canceled {
			return cause.Error()
		}
		return "context done"
	case <-stdinClosed:
		return "stdin closed"
	}
}
