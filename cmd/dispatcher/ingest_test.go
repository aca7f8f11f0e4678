package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-dev/herald/dispatcher/ingest"
	"github.com/herald-dev/herald/internal/pki"
)

// writeKeyPair issues a certificate for 127.0.0.1 from ca and writes it as
// the kubelet updates a mounted Secret: new files renamed into place.
func writeKeyPair(t *testing.T, ca *pki.CA, files ingestTLSFiles) *big.Int {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string][]byte{files.keyFile: keyPEM, files.certFile: certPEM} {
		tmp := path + ".new"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	return pki.ParseCertificates(certPEM)[0].SerialNumber
}

// startIngest serves a handler counting its requests on a free loopback
// port and returns the address and the counter.
func startIngest(t *testing.T, ctx context.Context, files ingestTLSFiles) (string, *atomic.Int64) {
	t.Helper()
	certs, err := files.watcher()
	if err != nil {
		t.Fatal(err)
	}
	if certs != nil {
		certs = certs.WithWatchInterval(100 * time.Millisecond)
		go func() { _ = certs.Start(ctx) }()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	var handled atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		handled.Add(1)
		w.WriteHeader(http.StatusAccepted)
	})
	go func() { _ = serveIngest(ctx, addr, certs, h, ingest.ServerOptions{}) }()
	return addr, &handled
}

// post sends one request on a new connection and returns the status and
// the serial of the certificate the server presented (nil over HTTP).
func post(t *testing.T, client *http.Client, url string) (int, *big.Int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Post(url, "application/cloudevents+json", strings.NewReader("{}"))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.TLS == nil {
				return resp.StatusCode, nil
			}
			return resp.StatusCode, resp.TLS.PeerCertificates[0].SerialNumber
		}
		if time.Now().After(deadline) { // the server is still starting
			t.Fatalf("POST %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIngestServesHTTPSAndReloadsRotatedCertificate: ingest serves the
// certificate from its files, refuses plain HTTP on its port, and serves a
// rotated certificate without a restart.
func TestIngestServesHTTPSAndReloadsRotatedCertificate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, err := pki.NewCA("test CA", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := ingestTLSFiles{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	first := writeKeyPair(t, ca, files)
	addr, handled := startIngest(t, ctx, files)

	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true, // every request makes a new handshake
		Proxy:             nil,
	}}
	url := "https://" + addr + "/v1/namespaces/shop/events"
	code, serial := post(t, client, url)
	if code != http.StatusAccepted || serial.Cmp(first) != 0 {
		t.Fatalf("HTTPS: got %d with certificate serial %v, want 202 with %v", code, serial, first)
	}

	plain := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	before := handled.Load()
	if code, _ := post(t, plain, "http://"+addr+"/v1/namespaces/shop/events"); code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the HTTPS port: got %d, want 400", code)
	}
	if handled.Load() != before {
		t.Error("a plain HTTP request reached the ingest handler")
	}

	second := writeKeyPair(t, ca, files)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, serial := post(t, client, url)
		if code == http.StatusAccepted && serial.Cmp(second) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still served certificate %v after the files were replaced with %v", serial, second)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestIngestPlainHTTPOnlyWhenAskedFor: without certificate files the
// dispatcher refuses to start and names the way out; with
// --ingest-insecure-http it serves plain HTTP.
func TestIngestPlainHTTPOnlyWhenAskedFor(t *testing.T) {
	dir := t.TempDir()
	missing := ingestTLSFiles{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	if _, err := missing.watcher(); err == nil || !strings.Contains(err.Error(), "--ingest-insecure-http") {
		t.Errorf("missing certificate files: want an error naming --ingest-insecure-http, got %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, handled := startIngest(t, ctx, ingestTLSFiles{insecureHTTP: true})
	plain := &http.Client{Transport: &http.Transport{Proxy: nil}}
	if code, _ := post(t, plain, "http://"+addr+"/v1/namespaces/shop/events"); code != http.StatusAccepted || handled.Load() != 1 {
		t.Errorf("--ingest-insecure-http: got %d (%d handled), want 202 over plain HTTP", code, handled.Load())
	}
}
