package stats

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"
)

// StatusFile is the name of the status file a bridge writes into its
// state directory, for `mirage-server stats`.
const StatusFile = "stats.json"

// WriteFile writes the snapshot to path atomically (a temporary file in
// the same directory, renamed over path), mode 0600: a reader sees the
// last whole snapshot, never half of one. It is rewritten every few
// seconds, so it is not synced to disk: a crash loses nothing that
// matters.
func WriteFile(path string, s Snapshot) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		// CreateTemp makes 0600 already; say so in case umask or the
		// platform differ.
		err = f.Chmod(0o600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// ReadFile reads a status file written by WriteFile.
func ReadFile(path string) (Snapshot, error) {
	var s Snapshot
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, fmt.Errorf("%s does not exist: mirage-server writes it while it runs (is it running, with this -state?)", path)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil || s.Version != 1 {
		return s, fmt.Errorf("%s is not a status file this version of mirage-server understands (%v)", path, err)
	}
	return s, nil
}

// WriteTable prints the snapshot for an operator: when it was taken (and
// a warning if that is long ago, as when the bridge is not running), then
// one line per user.
func WriteTable(w io.Writer, s Snapshot, now time.Time, stale time.Duration) {
	fmt.Fprintf(w, "Counters at %s (bridge running since %s; they start at zero when it starts).\n",
		s.Time.Local().Format(time.DateTime), s.Started.Local().Format(time.DateTime))
	if age := now.Sub(s.Time); age > stale {
		fmt.Fprintf(w, "WARNING: these are %v old: the bridge is not running or cannot write its state directory.\n", age.Round(time.Second))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "USER\tSESSIONS OPEN\tSESSIONS\tSTREAMS OPEN\tSTREAMS\tUP\tDOWN\t")
	for _, r := range s.Users {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.Name, r.SessionsOpen, r.SessionsTotal,
			r.StreamsOpen, r.StreamsTotal, HumanBytes(r.BytesUp), HumanBytes(r.BytesDown))
	}
	tw.Flush()
	if len(s.Users) == 0 {
		fmt.Fprintln(w, "(no users yet)")
	}
}

// HumanBytes writes a byte count the way an operator reads it.
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
