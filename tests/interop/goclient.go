// A fourth TLS client for the interoperability suite: Go's crypto/tls, standard library only.
//
// usage: goclient -connect HOST:PORT -version 1.2|1.3 -cipher AES-128-GCM|AES-256-GCM|CHACHA20-POLY1305
//
//	[-servername NAME] [-ca FILE]
//
// Like the other clients it reads one line from stdin, sends it, and prints what comes back with
// the negotiated version and suite. It prints the echo only when the handshake negotiated exactly
// the version and cipher asked for, so a test that looks for its token also checks those.
//
// TLS 1.2 suites come from Config.CipherSuites. Go offers no setting for TLS 1.3 suites: the
// client always offers its three built-in ones (and no GODEBUG option changes that; cpu.aes=off
// only reorders them, and ktla's server picks by its own preference anyway). To offer one suite
// only, this program rewrites crypto/tls's unexported default lists through go:linkname before
// the handshake. That works on Debian's Go (1.19); should a later Go rename or protect those
// variables, the build or the negotiated-suite check below fails rather than passing quietly.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
	_ "unsafe" // go:linkname
)

//go:linkname tls13Suites crypto/tls.defaultCipherSuitesTLS13
var tls13Suites []uint16

//go:linkname tls13SuitesNoAES crypto/tls.defaultCipherSuitesTLS13NoAES
var tls13SuitesNoAES []uint16

var suites = map[string]struct{ tls12, tls13 uint16 }{
	"AES-128-GCM":       {tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_AES_128_GCM_SHA256},
	"AES-256-GCM":       {tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_AES_256_GCM_SHA384},
	"CHACHA20-POLY1305": {tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256},
}

func versionName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "goclient: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	connect := flag.String("connect", "", "HOST:PORT of the server")
	version := flag.String("version", "1.3", "TLS version: 1.2 or 1.3 (the only one offered)")
	cipher := flag.String("cipher", "AES-128-GCM", "AES-128-GCM, AES-256-GCM or CHACHA20-POLY1305")
	servername := flag.String("servername", "localhost", "SNI and the name the certificate must carry")
	ca := flag.String("ca", "", "PEM certificate to verify the server against (default: no verification)")
	flag.Parse()
	if *connect == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	s, ok := suites[*cipher]
	if !ok {
		fail("unknown cipher %q", *cipher)
	}

	cfg := &tls.Config{ServerName: *servername}
	var want uint16
	switch *version {
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		cfg.CipherSuites = []uint16{s.tls12}
		want = s.tls12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
		tls13Suites = []uint16{s.tls13}
		tls13SuitesNoAES = []uint16{s.tls13}
		want = s.tls13
	default:
		fail("unknown version %q", *version)
	}
	if *ca == "" {
		cfg.InsecureSkipVerify = true
	} else {
		pem, err := os.ReadFile(*ca)
		if err != nil {
			fail("%v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			fail("no certificate in %s", *ca)
		}
	}

	raw, err := net.DialTimeout("tcp", *connect, 60*time.Second)
	if err != nil {
		fail("%v", err)
	}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if err := conn.Handshake(); err != nil {
		fail("handshake: %v", err)
	}
	st := conn.ConnectionState()
	if st.Version != cfg.MaxVersion || st.CipherSuite != want {
		fail("negotiated %s %s, wanted TLS %s %s", versionName(st.Version),
			tls.CipherSuiteName(st.CipherSuite), *version, tls.CipherSuiteName(want))
	}

	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		fail("stdin: %v", err)
	}
	if _, err := io.WriteString(conn, line); err != nil {
		fail("write: %v", err)
	}
	got := make([]byte, len(line))
	if _, err := io.ReadFull(conn, got); err != nil {
		fail("read: %v (got %q)", err, got)
	}
	if string(got) != line {
		fail("echoed %q, sent %q", got, line)
	}
	fmt.Printf("%s %s %s\n", got[:len(got)-1], versionName(st.Version), tls.CipherSuiteName(st.CipherSuite))

	// close_notify, then wait for the server to close too (its own close_notify, or EOF).
	if err := conn.CloseWrite(); err != nil {
		fail("close_notify: %v", err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		fmt.Fprintf(os.Stderr, "goclient: after close_notify: %v\n", err)
	}
}
