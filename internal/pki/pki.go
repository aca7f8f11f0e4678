// Package pki issues and renews the certificates Herald serves with: a
// self-signed CA and serving certificates it signs, each kept in a
// kubernetes.io/tls Secret (keys tls.crt, tls.key and ca.crt).
//
// The functions on certificates (NewCA, CA.Issue, RenewAt, Bundle) are pure;
// Keeper applies them to Secrets. Neither knows what the certificates
// serve: the manager uses them for the dispatcher's ingest, and any other
// HTTPS server of Herald can get a Serving of its own from the same CA.
//
// Lifetimes: the CA lives 10 years (DefaultCALifetime), the leaves 1 year
// (DefaultServingLifetime), and each is renewed when two thirds of its
// lifetime have passed. See Keeper for how a CA is rotated without
// breaking clients.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

const (
	// DefaultCALifetime is the CA's validity. A CA change reaches clients
	// only as fast as their trust bundle, so the CA is long-lived, as
	// kubeadm's is; its key never leaves its Secret.
	DefaultCALifetime = 10 * 365 * 24 * time.Hour
	// DefaultServingLifetime is a serving certificate's validity, as
	// kubeadm's serving certificates. Servers reload it from files, so a
	// renewal costs nothing.
	DefaultServingLifetime = 365 * 24 * time.Hour

	// backdate is how far NotBefore lies before the issuing time, so that
	// clients with a clock slightly behind accept a fresh certificate.
	backdate = 5 * time.Minute
)

// CA is a certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed CA valid from now for lifetime.
func NewCA(commonName string, now time.Time, lifetime time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := template(commonName, now, now.Add(lifetime))
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ParseCA reads a CA from PEM: one certificate, which must be a CA, and its
// private key.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, key, err := ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue signs a serving certificate for hosts (DNS names or IP addresses)
// valid from now for lifetime, but never beyond the CA itself.
func (ca *CA) Issue(hosts []string, now time.Time, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("a serving certificate needs at least one host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate serving key: %w", err)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl, err := template(hosts[0], now, notAfter)
	if err != nil {
		return nil, nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM is the CA key in PEM.
func (ca *CA) KeyPEM() ([]byte, error) {
	return encodeKey(ca.Key)
}

// RenewAt is when cert should be replaced: once two thirds of its lifetime
// have passed, which leaves a third of it to notice and fix a failed
// renewal.
func RenewAt(cert *x509.Certificate) time.Time {
	lifetime := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotAfter.Add(-lifetime / 3)
}

// ServiceHosts are the DNS names a client can reach a Service by from
// inside the cluster.
func ServiceHosts(service, namespace string) []string {
	return []string{
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc",
		service + "." + namespace + ".svc.cluster.local",
	}
}

// Bundle is a PEM trust bundle: first, the certificates of first (the
// current CA), then those of rest that are still valid at now and not
// already included. Rotating a CA keeps the previous one in the bundle
// until it expires, so that certificates it signed stay trusted.
func Bundle(now time.Time, first *x509.Certificate, rest []byte) []byte {
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: first.Raw})
	seen := [][]byte{first.Raw}
	for _, c := range ParseCertificates(rest) {
		if now.After(c.NotAfter) || slices.ContainsFunc(seen, func(raw []byte) bool { return bytes.Equal(raw, c.Raw) }) {
			continue
		}
		seen = append(seen, c.Raw)
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCertificates returns the certificates in PEM data, skipping blocks
// that are not certificates or do not parse.
func ParseCertificates(data []byte) []*x509.Certificate {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			certs = append(certs, c)
		}
	}
}

// ParseKeyPair reads a certificate (the first of certPEM) and its private
// key, and checks that they belong together.
func ParseKeyPair(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	certs := ParseCertificates(certPEM)
	if len(certs) == 0 {
		return nil, nil, errors.New("no certificate in PEM data")
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, errors.New("no private key in PEM data")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if parsed, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
			if parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
				return nil, nil, errors.New("private key is not PKCS#8, SEC 1 or PKCS#1")
			}
		}
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("private key cannot sign")
	}
	pub, ok := certs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, nil, errors.New("private key does not match the certificate")
	}
	return certs[0], key, nil
}

func template(commonName string, now, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"Herald"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
	}, nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
