package stats

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// PrometheusContentType is the content type of the Prometheus text
// exposition format WritePrometheus writes.
const PrometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

// WritePrometheus writes the snapshot in the Prometheus text exposition
// format, one family per counter, each labelled by user.
func WritePrometheus(w io.Writer, s Snapshot) error {
	bw := bufio.NewWriter(w)
	gauge := func(name, help string, v func(Row) int64) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, r := range s.Users {
			fmt.Fprintf(bw, "%s{user=\"%s\"} %d\n", name, escapeLabel(r.Name), v(r))
		}
	}
	counter := func(name, help string, v func(Row) uint64) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
		for _, r := range s.Users {
			fmt.Fprintf(bw, "%s{user=\"%s\"} %d\n", name, escapeLabel(r.Name), v(r))
		}
	}
	gauge("mirage_sessions_open", "Sessions open now, per user.", func(r Row) int64 { return r.SessionsOpen })
	counter("mirage_sessions_total", "Sessions opened since the bridge started, per user.", func(r Row) uint64 { return r.SessionsTotal })
	gauge("mirage_streams_open", "Streams open now, per user.", func(r Row) int64 { return r.StreamsOpen })
	counter("mirage_streams_total", "Streams opened since the bridge started, per user.", func(r Row) uint64 { return r.StreamsTotal })
	fmt.Fprintf(bw, "# HELP mirage_bytes_total Bytes relayed since the bridge started, per user; up is from the user to the destination, down the other way.\n# TYPE mirage_bytes_total counter\n")
	for _, r := range s.Users {
		n := escapeLabel(r.Name)
		fmt.Fprintf(bw, "mirage_bytes_total{user=\"%s\",direction=\"up\"} %d\n", n, r.BytesUp)
		fmt.Fprintf(bw, "mirage_bytes_total{user=\"%s\",direction=\"down\"} %d\n", n, r.BytesDown)
	}
	fmt.Fprintf(bw, "# HELP mirage_start_time_seconds When the bridge started (its counters began at zero), in seconds since the Unix epoch.\n# TYPE mirage_start_time_seconds gauge\nmirage_start_time_seconds %d\n", s.Started.Unix())
	return bw.Flush()
}

// escapeLabel escapes a label value as the text format wants. User names
// cannot hold these characters today; this keeps the output valid if
// that changes.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// Handler serves the counters as Prometheus text at /metrics, and 404 at
// every other path.
func (c *Counters) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", PrometheusContentType)
		WritePrometheus(w, c.Snapshot())
	})
	return mux
}
