package transport

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// BenchmarkStrangerHandshake measures what a stranger waits for the
// cover's answer through a cover-mode bridge (a TLS handshake with the
// cover behind it, on loopback), with the cover dialed at once as before
// (at-once) and when the stranger is known (when-known, the default), side
// by side with the cover alone (direct). The three take turns, one
// handshake each, so that load on the machine falls on all alike; it
// reports each one's median and the ratio of when-known to at-once.
//
//	go test -run XXX -bench StrangerHandshake -count 6 ./transport/
func BenchmarkStrangerHandshake(b *testing.B) {
	cover := startPlainSite(b)
	quiet := func(c *ServerConfig) { c.Logger = slog.New(slog.DiscardHandler) }
	atOnce := startBridge(b, &CoverFace{Address: cover, DialDelay: -1}, echoHandler, quiet)
	whenKnown := startBridge(b, &CoverFace{Address: cover}, echoHandler, quiet)
	cfg := &tls.Config{ServerName: testSNI, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	addrs := []string{cover, atOnce.addr, whenKnown.addr}
	times := make([][]time.Duration, len(addrs))
	b.ResetTimer()
	for i := range b.N {
		for k := range addrs {
			k = (k + i) % len(addrs) // each goes first in turn
			start := time.Now()
			c, err := tls.Dial("tcp", addrs[k], cfg)
			if err != nil {
				b.Fatal(err)
			}
			times[k] = append(times[k], time.Since(start))
			c.Close()
		}
	}
	b.StopTimer()
	median := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds())
	}
	b.ReportMetric(median(times[0]), "direct-µs")
	b.ReportMetric(median(times[1]), "at-once-µs")
	b.ReportMetric(median(times[2]), "when-known-µs")
	b.ReportMetric(median(times[2])/median(times[1]), "when-known/at-once")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkTunnelCertificate measures what a cover-mode tunnel's
// certificate costs the bridge per connection: making it and one
// signature with its key (CertificateVerify), for a bridge that has not
// learned its cover (a fresh P-256 key, as before) and for one in front
// of a cover with an RSA-2048 leaf (the process's key, a padded leaf),
// taking turns; it reports each one's median.
//
//	go test -run XXX -bench TunnelCertificate -count 6 ./transport/
func BenchmarkTunnelCertificate(b *testing.B) {
	var key [32]byte
	ct := &coverTLS{key: keySpec{x509.RSA, 2048}, flight: []int{36, 1919, 281, 69}, chain: [][]byte{nil, make([]byte, 1100)}}
	if err := ct.prepare(); err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("transcript"))
	one := func(ct *coverTLS) time.Duration {
		start := time.Now()
		cert, err := ct.certificate(key)
		if err != nil {
			b.Fatal(err)
		}
		var opts crypto.SignerOpts = crypto.SHA256
		if _, ok := cert.PrivateKey.(*rsa.PrivateKey); ok {
			opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		}
		if _, err := cert.PrivateKey.(crypto.Signer).Sign(rand.Reader, digest[:], opts); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var before, after []time.Duration
	b.ResetTimer()
	for range b.N {
		before = append(before, one(nil))
		after = append(after, one(ct))
	}
	b.StopTimer()
	median := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds())
	}
	b.ReportMetric(median(before), "p256-fresh-µs")
	b.ReportMetric(median(after), "rsa2048-like-cover-µs")
	b.ReportMetric(0, "ns/op")
}
