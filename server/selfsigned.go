package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
)

// Files of the self-signed site face in the state directory.
const (
	selfSignedCertFile = "selfsigned-cert.pem"
	selfSignedKeyFile  = "selfsigned-key.pem"
	// legacySNIFile remembers that this bridge once handed out links
	// with sni=localhost (older versions gave every bridge without a
	// face flag that name), so that it keeps accepting their users.
	legacySNIFile = "legacy-sni.txt"
	// legacySNI is the name those links carry.
	legacySNI = "localhost"
)

// selfSigned describes the certificate a bridge without a certificate of
// its own makes for itself: which address and names it shows.
type selfSigned struct {
	ip    net.IP   // the bridge's address, nil when it is not known
	names []string // DNS names (-sni); usually none
}

// applianceProfile is the shape of the default certificate of one family
// of devices and servers that people reach by IP address and that make
// their own self-signed certificate on first boot. Each bridge picks one
// at random and varies the rest (key, validity, age, serial), so that no
// field is the same on every Mirage bridge; what is left in common is what
// countless devices on the Internet share with them.
type applianceProfile struct {
	name    string
	subject func(cn string) pkix.Name
	ca      bool // basicConstraints CA:TRUE, as `openssl req -x509` writes
	years   []int
}

// applianceProfiles are modelled on the defaults of:
//
//   - OpenSSL's `openssl req -x509 -newkey …` with the prompts left at
//     their defaults (C=AU, ST=Some-State, O=Internet Widgits Pty Ltd), the
//     most common subject of hand-made self-signed certificates: home
//     servers, Proxmox/NAS reverse proxies, admin panels. CA:TRUE from the
//     stock openssl.cnf v3_ca section; validity whatever -days said,
//     usually one, two, five or ten years.
//   - OpenWrt's uhttpd (px5g / uhttpd-gen): C=ZZ, ST=Somewhere, L=Unknown,
//     O=OpenWrt plus random hex (so that two routers differ), CN the
//     router's name or address; two years by default, RSA 2048 or P-256.
//   - Devices that name themselves by their address alone (IP cameras,
//     printers, IPMI/iDRAC/iLO board controllers, NAS web interfaces
//     reached by IP): CN and subjectAltName are the IP address, no
//     organisation; validities from one to ten years.
//
// Every profile puts the bridge's address, when known, in the CN and in a
// subjectAltName IP entry, as a device reached at that address would.
var applianceProfiles = []applianceProfile{
	{
		name: "openssl-req",
		subject: func(cn string) pkix.Name {
			return pkix.Name{Country: []string{"AU"}, Province: []string{"Some-State"},
				Organization: []string{"Internet Widgits Pty Ltd"}, CommonName: cn}
		},
		ca:    true,
		years: []int{1, 1, 2, 3, 5, 10, 10},
	},
	{
		name: "openwrt-uhttpd",
		subject: func(cn string) pkix.Name {
			return pkix.Name{Country: []string{"ZZ"}, Province: []string{"Somewhere"}, Locality: []string{"Unknown"},
				Organization: []string{"OpenWrt" + randomHex(4)}, CommonName: cn}
		},
		years: []int{2, 2, 2, 1, 5},
	},
	{
		name:    "ip-device",
		subject: func(cn string) pkix.Name { return pkix.Name{CommonName: cn} },
		years:   []int{1, 2, 3, 5, 10},
	},
}

// makeApplianceCertificate makes a self-signed certificate for s in the
// manner of a randomly chosen applianceProfile, with a key type, validity,
// age and serial number chosen for this bridge alone.
func makeApplianceCertificate(s selfSigned, now time.Time) (tls.Certificate, error) {
	p := applianceProfiles[randIntn(len(applianceProfiles))]
	var (
		priv crypto.Signer
		err  error
	)
	// Both are what such devices make today: RSA 2048 from the older
	// tools and defaults, P-256 from newer ones (and every browser hello
	// offers both).
	if randIntn(2) == 0 {
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return tls.Certificate{}, err
	}
	// OpenSSL writes 20 random bytes (top bit clear, so positive);
	// smaller tools 8 or 16.
	serialBytes := []int{20, 20, 16, 8}[randIntn(4)]
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(8*serialBytes-1)))
	if err != nil {
		return tls.Certificate{}, err
	}
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	// The certificate was made when the device was set up: some time
	// ago, at any time of day (not "now minus an hour", which said the
	// certificate was made when the program started), and runs for whole
	// years from then. At least a month is left before it expires.
	years := p.years[randIntn(len(p.years))]
	maxAgeDays := min(years*365-30, 3*365)
	notBefore := now.Add(-time.Duration(1+randIntn(maxAgeDays))*24*time.Hour - time.Duration(randIntn(86400))*time.Second).UTC().Truncate(time.Second)
	notAfter := notBefore.AddDate(years, 0, 0)

	cn := ""
	switch {
	case s.ip != nil:
		cn = s.ip.String()
	case len(s.names) > 0:
		cn = s.names[0]
	case p.name == "openwrt-uhttpd":
		cn = "OpenWrt"
	default:
		// No address known: a device named by its MAC, as many are
		// until someone names them.
		cn = "device-" + randomHex(3)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               p.subject(cn),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		DNSNames:              s.names,
		BasicConstraintsValid: true,
		IsCA:                  p.ca,
	}
	if s.ip != nil {
		tmpl.IPAddresses = []net.IP{s.ip}
	}
	if p.ca {
		// openssl's v3_ca writes subjectKeyIdentifier=hash and
		// authorityKeyIdentifier=keyid:always: the same SHA-1 of the
		// public key in both. Go writes the first by itself but the
		// second for a self-signed certificate only when asked.
		ski, err := subjectKeyID(priv.Public())
		if err != nil {
			return tls.Certificate{}, err
		}
		tmpl.SubjectKeyId, tmpl.AuthorityKeyId = ski, ski
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if _, ok := priv.(*rsa.PrivateKey); ok {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// loadOrCreateSelfSigned keeps one self-signed certificate in the state
// directory: a certificate that changed at every restart would itself be
// a sign that this is no ordinary device. A new one is made when there is
// none, when it is about to expire, when the bridge's address or names
// changed (a device moved to a new address makes a new one), and in place
// of the "localhost" certificate older versions made; in that last case
// legacy reports that the bridge handed out links with sni=localhost.
func loadOrCreateSelfSigned(stateDir string, s selfSigned) (cert tls.Certificate, legacy bool, err error) {
	certPath := filepath.Join(stateDir, selfSignedCertFile)
	keyPath := filepath.Join(stateDir, selfSignedKeyFile)
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err == nil && slices.Equal(leaf.DNSNames, []string{legacySNI}) {
			legacy = true
		} else if err == nil && time.Now().Before(leaf.NotAfter.Add(-24*time.Hour)) && certShows(leaf, s) {
			return cert, false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, false, fmt.Errorf("self-signed certificate in %s is damaged (%v): remove %s and %s to make a new one",
			stateDir, err, certPath, keyPath)
	}
	cert, err = makeApplianceCertificate(s, time.Now())
	if err != nil {
		return tls.Certificate{}, false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := keys.WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := keys.WriteFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		return tls.Certificate{}, false, err
	}
	cert, err = tls.LoadX509KeyPair(certPath, keyPath)
	return cert, legacy, err
}

// subjectKeyID is RFC 5280 §4.2.1.2's method (1): the SHA-1 of the
// subjectPublicKey bit string, as openssl's "hash" computes it.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:], nil
}

// certShows reports whether leaf names exactly the address and names s
// wants shown.
func certShows(leaf *x509.Certificate, s selfSigned) bool {
	if len(leaf.DNSNames) != len(s.names) {
		return false
	}
	for i := range s.names {
		if !strings.EqualFold(leaf.DNSNames[i], s.names[i]) {
			return false
		}
	}
	if s.ip == nil {
		return len(leaf.IPAddresses) == 0
	}
	return len(leaf.IPAddresses) == 1 && leaf.IPAddresses[0].Equal(s.ip)
}

// randIntn returns a uniform random int in [0, n) from crypto/rand: these
// choices are what tells one bridge from another, so they must not be
// predictable from a seed.
func randIntn(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		panic("crypto/rand failed: " + err.Error()) // as crypto/rand.Read itself does since Go 1.24
	}
	return int(v.Int64())
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
