package transport

import (
	"fmt"
	"testing"
	"time"
)

// TestClosedStuckUploads proves that uploads an app wrote in full and
// closed, towards destinations that do not read, do not stop the
// session's other streams. The bridge holds what they sent until their
// destinations read or their streams end there, so the client counts it
// in its bound until then. Before, the client forgot a stream's bytes in
// flight once it closed it: 156 closed uploads of 200 KiB made the bridge
// hold 31 MiB, its smux stopped reading the session, and the 157th
// upload, like every other stream, never went (this test failed so).
func TestClosedStuckUploads(t *testing.T) {
	t.Parallel()
	b, sess, released := dialUploadBridge(t)
	upload := append([]byte{'U'}, make([]byte, 200<<10)...)
	closed := 0
	for closed < 300 {
		st := openStream(t, sess)
		// Once the client's bound is reached, an upload waits for
		// room: that is where the app is pushed back.
		st.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := st.Write(upload)
		st.Close()
		if err != nil {
			break
		}
		closed++
	}
	held := b.server.buffers.held.Load()
	t.Logf("%d uploads closed; the bridge holds %d KiB", closed, held>>10)
	if closed == 0 {
		t.Fatal("no upload went")
	}
	if held > clientMostInflight {
		t.Errorf("the bridge holds %d bytes for closed stuck uploads, want at most %d", held, clientMostInflight)
	}
	echoBeside(t, sess, fmt.Sprintf("%d closed stuck uploads", closed))
	if n := sess.nextSeq.Load(); n > 1 {
		t.Errorf("the client dialled %d carriers beside closed stuck uploads, want 1: it took its carrier for frozen", n)
	}
	// Once the destinations read, the bridge lets go of it all, and the
	// client's bound with it: an upload beside them goes at once.
	released()
	waitUntil(t, "the bridge to let go of the closed uploads", func() bool {
		return b.server.buffers.held.Load() == 0
	})
	uploadBeside(t, sess, "closed uploads, once read")
	waitNothingInFlight(t, sess)
}
