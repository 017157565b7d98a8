package transport

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestUploadRecordsAreFullFromTheStart proves that a client's bulk upload
// goes in full 16 KiB records from the carrier's first DATA on, as
// Chromium's do (a capture of Chromium 156 posting 300 KB: 16,401-byte
// records from its first DATA record). Before, utls's dynamic record
// sizing cut the first 128 KiB of every carrier into records growing by
// 1,186 bytes (7,133, 8,319, 9,505, … on the wire): a progression no
// Chrome sends, shown by every new carrier that uploads.
func TestUploadRecordsAreFullFromTheStart(t *testing.T) {
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if st.Reply(StatusOK) == nil {
			io.Copy(io.Discard, st)
		}
	}, nil)
	relay := startTapRelay(t, b.addr)
	cfg := b.clientConfig()
	cfg.Address = relay.addr
	cfg.singleCarrier = true
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	up := <-relay.up
	st := openStream(t, sess)
	if _, err := st.Write(payload(256<<10, 9)); err != nil {
		t.Fatal(err)
	}
	// Wait until the upload has gone (about 16 records).
	deadline := time.Now().Add(10 * time.Second)
	var lens []int
	for {
		n, _ := up.count()
		lens = up.lengths(0, n)
		sum := 0
		for _, l := range lens {
			sum += l
		}
		if sum >= 256<<10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Records that are neither full nor small: a bulk record cut short.
	// A burst's tail may be one; a young stream's padded writes are
	// under 4 KiB.
	var cut []int
	for _, l := range lens {
		if l > 4<<10 && l < maxTLSRecord {
			cut = append(cut, l)
		}
	}
	t.Logf("upload records (plaintext bytes): %v", lens)
	if len(cut) > 2 {
		t.Fatalf("%d bulk records shorter than 16 KiB (%v): the upload's records are cut as Go's dynamic record sizing cuts them", len(cut), cut)
	}
}
