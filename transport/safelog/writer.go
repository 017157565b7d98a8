package safelog

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
)

// maxLine bounds how much of an unfinished line a Scrubber holds.
const maxLine = 64 << 10

// Scrubber is an io.Writer that replaces every IP address in what is written
// with "[scrubbed]" (as Scrub does) before passing it on.
//
// Addresses never span lines, so a Scrubber works line by line: it passes on
// each complete line and holds an unfinished one until its newline arrives,
// which keeps an address split across two Write calls from escaping in
// halves. A held line is bounded: past 64 KiB, the Scrubber writes it out,
// scrubbed as it is, up to its last byte that cannot belong to an address
// (or whole, if what follows that byte is itself over 64 KiB). Flush writes
// out what is held.
//
// A Scrubber is safe for concurrent use: each Write and Flush runs alone. It
// does not keep concurrent writers' partial lines apart, so writers that
// share one should each write whole lines, as slog handlers do.
type Scrubber struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte // an unfinished line
}

// NewScrubber returns a Scrubber that writes to w.
func NewScrubber(w io.Writer) *Scrubber {
	return &Scrubber{w: w}
}

// Write scrubs and passes on every complete line in what has been written so
// far, and holds the rest. It consumes all of p, so it returns len(p) even
// with an error: the error is the underlying writer's, and the lines it
// failed on are dropped rather than retried (they would be interleaved with
// later output in an unknown way).
func (s *Scrubber) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Look for the newline in p only: what was held has none, and searching
	// it again on every write would make a long line written in small
	// pieces quadratic.
	end := 0
	if i := bytes.LastIndexByte(p, '\n'); i >= 0 {
		end = len(s.buf) + i + 1
	}
	s.buf = append(s.buf, p...)
	if rest := len(s.buf) - end; rest > maxLine {
		cut := safeCut(s.buf[end:])
		if rest-cut > maxLine {
			cut = rest // the tail is itself too long: it all goes
		}
		end += cut
	}
	if end == 0 {
		return len(p), nil
	}
	err := s.emit(s.buf[:end])
	// Keep the unfinished tail, reusing the buffer. Drop a buffer that a
	// huge write grew, so one long burst does not pin memory for ever.
	n := copy(s.buf, s.buf[end:])
	s.buf = s.buf[:n]
	if cap(s.buf) > 2*maxLine && n <= maxLine {
		s.buf = append([]byte(nil), s.buf...)
	}
	return len(p), err
}

// Flush scrubs and writes out the unfinished line held, if any.
func (s *Scrubber) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) == 0 {
		return nil
	}
	err := s.emit(s.buf)
	s.buf = s.buf[:0]
	return err
}

// emit scrubs b and writes it to the underlying writer. s.mu must be held.
func (s *Scrubber) emit(b []byte) error {
	out := Scrub(string(b))
	n, err := io.WriteString(s.w, out)
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	return err
}

// safeCut returns how much of an over-long unfinished line can be written
// out without cutting through an address: everything up to and including
// its last byte that no address text (digits, hex letters, ':', '.',
// brackets, '%') contains. Cutting inside a zone name is harmless, since the
// address before its '%' is then already whole, and cutting inside a UTF-8
// sequence is too, since the bytes still reach w in order. If there is no
// such byte, the whole line goes.
func safeCut(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		c := b[i]
		if !isHex(c) && c != ':' && c != '.' && c != '[' && c != ']' && c != '%' {
			return i + 1
		}
	}
	return len(b)
}

// NewHandler returns a slog text handler at the given level (nil means
// Info) that writes to w through a Scrubber, or straight to w if unsafe is
// true. Every record is one line in one Write, so nothing is ever held back.
// Like every slog.TextHandler, it is safe for concurrent use.
// Scrubbing the handler's output, rather than its attributes, also covers
// addresses inside messages, errors and groups, whatever their type.
func NewHandler(w io.Writer, level slog.Leveler, unsafe bool) slog.Handler {
	if !unsafe {
		w = NewScrubber(w)
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
}
