package safelog

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// NewLogger returns the logger a binary uses: scrubbed unless unsafe,
// written to the file at path (created 0600, appended to) when path is not
// empty, else to stderr, or nowhere when quiet (a pluggable transport
// under tor, whose stdout is the protocol and whose stderr nobody reads).
// The returned function closes the file.
func NewLogger(path string, level slog.Leveler, unsafe, quiet bool) (*slog.Logger, func(), error) {
	var w io.Writer = os.Stderr
	closer := func() {}
	switch {
	case path != "":
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("opening the log file: %w", err)
		}
		w, closer = f, func() { f.Close() }
	case quiet:
		w = io.Discard
	}
	return slog.New(NewHandler(w, level, unsafe)), closer, nil
}
