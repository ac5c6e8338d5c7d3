// A client for the interoperability suite: Go's crypto/tls under net/http, standard library only.
//
// usage: goclient -connect HOST:PORT -version 1.2|1.3 -cipher AES-128-GCM|AES-256-GCM|CHACHA20-POLY1305
//
//	[-servername NAME] [-ca FILE] [-h2] PATH...
//
// Downloads https://HOST:PORT/PATH for each PATH in turn with net/http's Transport, which keeps
// one connection alive between them, and prints "body STATUS LENGTH SHA256" for each, then
// "connections N" with the negotiated version and suite. It exits 1, saying why, if a handshake
// negotiated anything but the version and suite asked for, a body is shorter than its
// Content-Length, or the Transport had to dial more than once. With -h2 the Transport offers
// HTTP/2 as Go's default client does (ALPN h2), and every response must have come over it;
// without, HTTP/1.1 only.
//
// TLS 1.2 suites come from Config.CipherSuites. Go offers no setting for TLS 1.3 suites: the
// client always offers its three built-in ones (and no GODEBUG option changes that; cpu.aes=off
// only reorders them, and ktla's server picks by its own preference anyway). To offer one suite
// only, this program rewrites crypto/tls's unexported default lists through go:linkname before
// the handshake. That works on Debian's Go (1.19); should a later Go rename or protect those
// variables, the build or the negotiated-suite check below fails rather than passing quietly.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
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
	h2 := flag.Bool("h2", false, "offer HTTP/2 (ALPN h2), as net/http's default client does, and require it")
	flag.Parse()
	if *connect == "" || flag.NArg() == 0 {
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

	// HTTP/1.1 only unless -h2 (a custom TLSClientConfig leaves HTTP/2 off; ForceAttemptHTTP2
	// puts it back), no transparent gzip: the bytes hashed are the file's. Every dial is counted.
	var dials int32
	dialer := &net.Dialer{Timeout: 60 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:    cfg,
		DisableCompression: true,
		MaxConnsPerHost:    1,
		ForceAttemptHTTP2:  *h2,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			atomic.AddInt32(&dials, 1)
			return dialer.DialContext(ctx, network, addr)
		},
	}
	client := &http.Client{Transport: tr, Timeout: 120 * time.Second}
	var st *tls.ConnectionState
	for _, path := range flag.Args() {
		resp, err := client.Get("https://" + *connect + "/" + path)
		if err != nil {
			fail("GET /%s: %v", path, err)
		}
		st = resp.TLS
		if st == nil || st.Version != cfg.MaxVersion || st.CipherSuite != want {
			if st == nil {
				fail("GET /%s: no TLS", path)
			}
			fail("negotiated %s %s, wanted TLS %s %s", versionName(st.Version),
				tls.CipherSuiteName(st.CipherSuite), *version, tls.CipherSuiteName(want))
		}
		if wantMajor := map[bool]int{true: 2, false: 1}[*h2]; resp.ProtoMajor != wantMajor {
			fail("GET /%s: answered over %s, wanted HTTP/%d", path, resp.Proto, wantMajor)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		fmt.Printf("body %d %d %x\n", resp.StatusCode, n, h.Sum(nil))
		if err != nil {
			fail("GET /%s: body after %d bytes: %v", path, n, err)
		}
		if n != resp.ContentLength {
			fail("GET /%s: %d body bytes, Content-Length %d", path, n, resp.ContentLength)
		}
	}
	fmt.Printf("connections %d %s %s\n", dials, versionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	if dials != 1 {
		fail("dialled %d connections for %d requests", dials, flag.NArg())
	}
	// Closes the idle connection: close_notify, then the socket.
	tr.CloseIdleConnections()
}
