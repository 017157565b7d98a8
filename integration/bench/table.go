//go:build linux

package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// row is the median over rounds of one system's figures.
type row struct {
	name string
	r    result
	err  error
	idle *idleResult // nil: not measured
}

type table struct {
	title string
	rows  []row
	wire  bool // the wire bytes were measured (the delay line's pass)
}

func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if x >= 0 {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return -1
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func summarize(title string, systems []*system, res [][]result, idle map[string]idleResult) table {
	t := table{title: title}
	for i, s := range systems {
		rw := row{name: s.name}
		if ir, ok := idle[s.name]; ok {
			rw.idle = &ir
		}
		var ok []result
		for _, r := range res[i] {
			if r.err != nil {
				rw.err = r.err
				continue
			}
			ok = append(ok, r)
		}
		if len(ok) > 0 {
			rw.err = nil // report what worked; a failed round only shrinks the sample
			f := func(get func(result) float64) float64 {
				var xs []float64
				for _, r := range ok {
					xs = append(xs, get(r))
				}
				return median(xs)
			}
			rw.r = result{
				down1: f(func(r result) float64 { return r.down1 }), down8: f(func(r result) float64 { return r.down8 }),
				up1: f(func(r result) float64 { return r.up1 }), up8: f(func(r result) float64 { return r.up8 }),
				ttfb50: f(func(r result) float64 { return r.ttfb50 }), ttfb99: f(func(r result) float64 { return r.ttfb99 }),
				loaded50: f(func(r result) float64 { return r.loaded50 }),
				cpuCli:   f(func(r result) float64 { return r.cpuCli }), cpuSrv: f(func(r result) float64 { return r.cpuSrv }),
				cpuMachine: f(func(r result) float64 { return r.cpuMachine }),
				idleDown8:  f(func(r result) float64 { return r.idleDown8 }), idleUp8: f(func(r result) float64 { return r.idleUp8 }),
				rssCli: f(func(r result) float64 { return r.rssCli }), rssSrv: f(func(r result) float64 { return r.rssSrv }),
				cold: f(func(r result) float64 { return r.cold }), coldReady: f(func(r result) float64 { return r.coldReady }),
				wireDown: f(func(r result) float64 { return r.wireDown }), wireUp: f(func(r result) float64 { return r.wireUp }),
				wireStream: f(func(r result) float64 { return r.wireStream }),
			}
		}
		t.rows = append(t.rows, rw)
	}
	return t
}

// cpuTotal is client+server s/GiB, counting an absent side as 0 (direct
// TCP has no server process) but unknown when the client is unknown.
func cpuTotal(r result) float64 {
	if r.cpuCli < 0 {
		return -1
	}
	return r.cpuCli + math.Max(r.cpuSrv, 0)
}

func (t table) base(prefix string) (result, bool) {
	for _, rw := range t.rows {
		if strings.HasPrefix(rw.name, prefix) && rw.err == nil {
			return rw.r, true
		}
	}
	return result{}, false
}

func num(x float64, prec int) string {
	if x < 0 || math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, x)
}

// ratio formats x against the direct and TLS baselines as "x (d× / t×)".
func ratio(x, d, tl float64, okD, okT bool, prec int) string {
	s := num(x, prec)
	if x < 0 {
		return s
	}
	r := func(b float64, ok bool) string {
		if !ok || b <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", x/b)
	}
	return fmt.Sprintf("%s (%s / %s)", s, r(d, okD), r(tl, okT))
}

func (t table) markdown(o options) string {
	var b strings.Builder
	d, okD := t.base("direct")
	tl, okT := t.base("Go crypto/tls")
	fmt.Fprintf(&b, "## %s\n\nEach figure: value (ratio to direct TCP / ratio to Go TLS relay).\n\n", t.title)
	cols := []string{"system", "1 stream down MiB/s", fmt.Sprint(o.streams) + " streams down MiB/s"}
	if o.upload {
		cols = append(cols, "1 stream up MiB/s", fmt.Sprint(o.streams)+" streams up MiB/s")
	}
	cols = append(cols, "TTFB p50 ms", "TTFB p99 ms", "TTFB under load p50 ms", "cold start ms", "of which client ready ms",
		"CPU s/GiB client + server = total", "machine CPU s/GiB", fmt.Sprintf("idle cores during %d streams down / up", o.streams), "peak RSS after bulk MiB client / server")
	if o.idle > 0 {
		cols = append(cols, fmt.Sprintf("%d idle streams: peak RSS MiB client / server", o.idle), "KiB per idle stream client / server")
	}
	if t.wire {
		cols = append(cols, "wire bytes per byte down", "wire bytes per byte up", "wire bytes per new stream")
	}
	b.WriteString("| " + strings.Join(cols, " | ") + " |\n|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, rw := range t.rows {
		if rw.err != nil {
			fmt.Fprintf(&b, "| %s | failed: %s |\n", rw.name, strings.ReplaceAll(rw.err.Error(), "|", "/"))
			continue
		}
		r := rw.r
		c := []string{rw.name, ratio(r.down1, d.down1, tl.down1, okD, okT, rateDecimals(r.down1)), ratio(r.down8, d.down8, tl.down8, okD, okT, rateDecimals(r.down8))}
		if o.upload {
			c = append(c, ratio(r.up1, d.up1, tl.up1, okD, okT, rateDecimals(r.up1)), ratio(r.up8, d.up8, tl.up8, okD, okT, rateDecimals(r.up8)))
		}
		c = append(c,
			ratio(r.ttfb50, d.ttfb50, tl.ttfb50, okD, okT, 2), ratio(r.ttfb99, d.ttfb99, tl.ttfb99, okD, okT, 2),
			ratio(r.loaded50, d.loaded50, tl.loaded50, okD, okT, 2),
			ratio(r.cold, d.cold, tl.cold, okD, okT, 1), num(r.coldReady, 1),
			fmt.Sprintf("%s + %s = %s", num(r.cpuCli, 2), num(r.cpuSrv, 2), ratio(cpuTotal(r), cpuTotal(d), cpuTotal(tl), okD, okT, 2)),
			ratio(r.cpuMachine, d.cpuMachine, tl.cpuMachine, okD, okT, 2),
			fmt.Sprintf("%s / %s", num(r.idleDown8, 2), num(r.idleUp8, 2)),
			fmt.Sprintf("%s / %s", num(r.rssCli, 0), num(r.rssSrv, 0)))
		if o.idle > 0 {
			switch {
			case rw.idle == nil:
				c = append(c, "–", "–")
			case rw.idle.err != nil:
				c = append(c, "failed: "+strings.ReplaceAll(rw.idle.err.Error(), "|", "/"), "–")
			default:
				c = append(c, fmt.Sprintf("%s / %s", num(rw.idle.hwmCli, 0), num(rw.idle.hwmSrv, 0)),
					fmt.Sprintf("%s / %s", signed(rw.idle.perCli), signed(rw.idle.perSrv)))
			}
		}
		if t.wire {
			c = append(c, ratio(r.wireDown, d.wireDown, tl.wireDown, okD, okT, 4), ratio(r.wireUp, d.wireUp, tl.wireUp, okD, okT, 4),
				ratio(r.wireStream, d.wireStream, tl.wireStream, okD, okT, 0))
		}
		b.WriteString("| " + strings.Join(c, " | ") + " |\n")
	}
	return b.String()
}

// rateDecimals returns the decimals a throughput of x MiB/s is shown with: none
// on loopback's hundreds, two at a slow link's few (2.38, not 2).
func rateDecimals(x float64) int {
	switch {
	case x >= 100:
		return 0
	case x >= 10:
		return 1
	}
	return 2
}

// signed formats a growth that may be negative (-1 is a real value here,
// so only NaN means unknown).
func signed(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.1f", x)
}

// coldBar checks issue 9's bar for the table: Mirage's cold start at most
// the Go TLS relay's plus one RTT of the delay line.
func (t table) coldBar(rtt time.Duration) string {
	m, okM := t.base("mirage")
	tl, okT := t.base("Go crypto/tls")
	if !okM || !okT || m.cold < 0 || tl.cold < 0 {
		return ""
	}
	limit := tl.cold + float64(rtt)/float64(time.Millisecond)
	verdict := "met"
	if m.cold > limit {
		verdict = "NOT met"
	}
	return fmt.Sprintf("Issue 9's cold-start bar (Mirage ≤ Go TLS relay + 1 RTT): %.1f ms ≤ %.1f + %.0f = %.1f ms: %s. After the client's SOCKS port accepts (cold start less client ready): Mirage %.1f ms, Go TLS relay %.1f ms.",
		m.cold, tl.cold, float64(rtt)/float64(time.Millisecond), limit, verdict, m.cold-m.coldReady, tl.cold-tl.coldReady)
}
