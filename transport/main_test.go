package transport

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine running: every
// session, stream, face connection and copy loop must end when its
// connection does.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
