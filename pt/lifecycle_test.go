package pt

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// TestWaitForExit proves the two ends RunClient and RunServer wait for:
// the caller's context (how the binaries pass on SIGTERM and SIGINT, since
// the library installs no signal handler) and tor closing stdin.
func TestWaitForExit(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan string, 1)
	go func() { done <- waitForExit(ctx, nil) }()
	cancel(errors.New("terminated"))
	select {
	case why := <-done:
		if why != "terminated" {
			t.Errorf("reason %q, want the context's cause", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitForExit ignored the end of its context")
	}

	t.Setenv("TOR_PT_EXIT_ON_STDIN_CLOSE", "1")
	r, w := io.Pipe()
	go func() { done <- waitForExit(context.Background(), r) }()
	w.Close()
	select {
	case why := <-done:
		if why != "stdin closed" {
			t.Errorf("reason %q, want stdin closed", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitForExit ignored stdin closing")
	}
}
