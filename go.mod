module github.com/mirage-pt/mirage

go 1.26.8

require (
	github.com/mdp/qrterminal/v3 v3.2.1
	github.com/refraction-networking/utls v1.8.2
	github.com/xtaci/smux v1.5.58
	gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib v1.6.0
	go.uber.org/goleak v1.3.0
	golang.org/x/crypto v0.59.0
	golang.org/x/net v0.62.0
	golang.org/x/sys v0.50.0
	golang.org/x/term v0.48.0
)

require (
	github.com/andybalholm/brotli v1.0.6 // indirect
	github.com/klauspost/compress v1.17.4 // indirect
	golang.org/x/text v0.44.0 // indirect
	rsc.io/qr v0.2.0 // indirect
)
