package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/mirage-pt/mirage/stats"
)

const statsUsage = `Usage: mirage-server stats [-state DIR]

Shows what each user's link has carried since the bridge started: sessions
and streams (open now, and opened in all), bytes up (from the user) and down
(to the user). A running bridge writes these counts to DIR/stats.json every
few seconds; they are per user, never per address.

Flags:
`

// statsStale is how old a status file may be before stats warns that the
// bridge is not writing it (it writes every statsInterval).
const statsStale = 30 * time.Second

// runStats is the stats subcommand.
func runStats(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mirage-server stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, statsUsage)
		fs.PrintDefaults()
	}
	stateDir := fs.String("state", defaultStateDir(), "the bridge's state directory (under tor: its TOR_PT_STATE_LOCATION, e.g. /var/lib/tor/pt_state)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errors.New("stats: takes no arguments besides -state")
	}
	s, err := stats.ReadFile(filepath.Join(*stateDir, stats.StatusFile))
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	stats.WriteTable(stdout, s, time.Now(), statsStale)
	return nil
}
