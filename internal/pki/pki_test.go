package pki

import (
	"crypto/x509"
	"net"
	"testing"
	"time"
)

var t0 = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)

func mustCA(t *testing.T, now time.Time, lifetime time.Duration) *CA {
	t.Helper()
	ca, err := NewCA("test CA", now, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestIssueServesEveryHost(t *testing.T) {
	ca := mustCA(t, t0, DefaultCALifetime)
	hosts := append(ServiceHosts("herald-dispatcher", "herald-system"), "127.0.0.1", "::1")
	certPEM, keyPEM, err := ca.Issue(hosts, t0, DefaultServingLifetime)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, host := range hosts {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: t0}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if got := len(cert.IPAddresses); got != 2 || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("IP addresses are IP SANs, not DNS names: %v", cert.IPAddresses)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "other.example.com", Roots: roots, CurrentTime: t0}); err == nil {
		t.Error("the certificate must not verify for a host it was not issued for")
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: hosts[0], Roots: roots, CurrentTime: t0.Add(-time.Minute)}); err != nil {
		t.Errorf("a client whose clock is a minute behind must accept a fresh certificate: %v", err)
	}
}

func TestIssueNeverOutlivesTheCA(t *testing.T) {
	ca := mustCA(t, t0, 30*24*time.Hour)
	certPEM, _, err := ca.Issue([]string{"svc"}, t0, DefaultServingLifetime)
	if err != nil {
		t.Fatal(err)
	}
	if cert := ParseCertificates(certPEM)[0]; !cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter %s, want the CA's %s", cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestRenewAtTwoThirds(t *testing.T) {
	cert := &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(300 * 24 * time.Hour)}
	if got, want := RenewAt(cert), t0.Add(200*24*time.Hour); !got.Equal(want) {
		t.Errorf("RenewAt = %s, want %s", got, want)
	}
}

func TestBundleKeepsValidPreviousCAs(t *testing.T) {
	expired := mustCA(t, t0.Add(-48*time.Hour), 24*time.Hour)
	previous := mustCA(t, t0.Add(-time.Hour), DefaultCALifetime)
	current := mustCA(t, t0, DefaultCALifetime)
	rest := append(append(previous.CertPEM(), expired.CertPEM()...), current.CertPEM()...)
	rest = append(rest, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")...)
	got := ParseCertificates(Bundle(t0, current.Cert, rest))
	if len(got) != 2 || !got[0].Equal(current.Cert) || !got[1].Equal(previous.Cert) {
		t.Errorf("bundle: want current then previous CA, without the expired one, duplicates or garbage; got %d certificates", len(got))
	}
}

func TestParseKeyPairRejectsMismatchedKey(t *testing.T) {
	a, b := mustCA(t, t0, time.Hour), mustCA(t, t0, time.Hour)
	keyB, err := b.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ParseKeyPair(a.CertPEM(), keyB); err == nil {
		t.Error("a certificate with another's key must be refused")
	}
	if _, err := ParseCA(a.CertPEM(), keyB); err == nil {
		t.Error("ParseCA must refuse it too")
	}
	keyA, _ := a.KeyPEM()
	if _, err := ParseCA(a.CertPEM(), keyA); err != nil {
		t.Errorf("the matching pair: %v", err)
	}
}
