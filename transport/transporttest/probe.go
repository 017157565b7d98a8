// Package transporttest holds helpers for tests of Mirage's transport and
// of the binaries built on it: the active probes a censor sends to a
// suspected bridge, and a way to compare the answers.
package transporttest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// ProbeResult is what a prober learns from one connection: the bytes that
// came back and how the connection ended.
type ProbeResult struct {
	Data []byte
	// End is "eof", "reset", "open" (still open when the prober stopped
	// waiting), or the text of another error.
	End string
}

// Probe connects to addr, sends data (nothing for silence), and reads what
// comes back for up to wait.
func Probe(addr string, data []byte, wait time.Duration) (ProbeResult, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return ProbeResult{}, err
	}
	defer c.Close()
	if len(data) > 0 {
		if _, err := c.Write(data); err != nil {
			return ProbeResult{End: "write error"}, nil
		}
	}
	c.SetReadDeadline(time.Now().Add(wait))
	got, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case err == nil:
		return ProbeResult{got, "eof"}, nil
	case errors.Is(err, syscall.ECONNRESET):
		return ProbeResult{got, "reset"}, nil
	case errors.As(err, &ne) && ne.Timeout():
		return ProbeResult{got, "open"}, nil
	}
	return ProbeResult{got, err.Error()}, nil
}

// Shape describes an answer for comparison. TLS answers carry fresh random
// values and keys, so for them the record types and lengths must match
// (and alerts byte for byte); anything else must match byte for byte.
func (p ProbeResult) Shape() string {
	d := p.Data
	if len(d) < 5 || d[0] < 0x14 || d[0] > 0x17 || d[1] != 3 {
		return fmt.Sprintf("bytes %q, end %s", d, p.End)
	}
	var s bytes.Buffer
	for len(d) >= 5 {
		n := int(d[3])<<8 | int(d[4])
		fmt.Fprintf(&s, "[%02x %02x%02x len %d] ", d[0], d[1], d[2], n)
		if len(d) < 5+n {
			s.WriteString("(truncated) ")
			d = nil
			break
		}
		if d[0] == 0x15 { // alerts are short and deterministic: compare them
			fmt.Fprintf(&s, "alert %x ", d[5:5+n])
		}
		d = d[5+n:]
	}
	fmt.Fprintf(&s, "+%d bytes, end %s", len(d), p.End)
	return s.String()
}

// AgreesToMultipath connects to addr asking for Multipath TCP (MP_CAPABLE
// in the SYN) and says whether the listener agreed. A kernel without MPTCP
// agrees to nothing.
func AgreesToMultipath(t testing.TB, addr string) bool {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second}
	d.SetMultipathTCP(true)
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	defer c.Close()
	mp, err := c.(*net.TCPConn).MultipathTCP()
	if err != nil {
		t.Fatalf("asking whether %s agreed to Multipath TCP: %v", addr, err)
	}
	return mp
}
