package queue

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// TestExternalNATSAuthentication runs the queue against a loopback NATS
// server that requires one kind of credential at a time — an NKey user, a
// user JWT from a .creds file (operator mode), a client certificate (TLS
// verify) — and checks that Open without it fails with the server's reason
// and that Open with it, through Config.Auth as the dispatcher's flags set
// it, stores and delivers an event.
func TestExternalNATSAuthentication(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS servers on loopback")
	}
	tests := []struct {
		name string
		// setup configures the server and returns the credential's files
		// and what Open may leave out: the files without the credential.
		setup       func(t *testing.T, opts *server.Options) (with, without NATSAuth)
		wantRefusal func(error) bool
	}{
		{
			name: "NKey user",
			setup: func(t *testing.T, opts *server.Options) (NATSAuth, NATSAuth) {
				user := mustKeyPair(t, nkeys.CreateUser)
				opts.Nkeys = []*server.NkeyUser{{Nkey: mustPublicKey(t, user)}}
				seed, err := user.Seed()
				if err != nil {
					t.Fatal(err)
				}
				return NATSAuth{NKeySeedFile: writeFile(t, "nkey.seed", seed)}, NATSAuth{}
			},
			wantRefusal: isAuthorizationViolation,
		},
		{
			name: "user JWT from a .creds file",
			setup: func(t *testing.T, opts *server.Options) (NATSAuth, NATSAuth) {
				creds := configureOperatorMode(t, opts)
				return NATSAuth{CredentialsFile: writeFile(t, "nats.creds", creds)}, NATSAuth{}
			},
			wantRefusal: isAuthorizationViolation,
		},
		{
			name: "client certificate (TLS verify)",
			setup: func(t *testing.T, opts *server.Options) (NATSAuth, NATSAuth) {
				pki := newNATSTestPKI(t)
				opts.TLS, opts.TLSVerify, opts.TLSTimeout = true, true, 5
				opts.TLSConfig = &tls.Config{
					MinVersion:   tls.VersionTLS12,
					Certificates: []tls.Certificate{pki.server},
					ClientCAs:    pki.pool,
					ClientAuth:   tls.RequireAndVerifyClientCert,
				}
				caFile := writeFile(t, "ca.crt", pki.caPEM)
				return NATSAuth{
					CAFile:   caFile,
					CertFile: writeFile(t, "tls.crt", pki.clientPEM),
					KeyFile:  writeFile(t, "tls.key", pki.clientKeyPEM),
				}, NATSAuth{CAFile: caFile}
			},
			// The server's alert, or the connection it closed on the
			// handshake when the client was still writing.
			wantRefusal: func(err error) bool {
				return strings.Contains(err.Error(), "tls: certificate required") ||
					strings.Contains(err.Error(), "tls error: connection closed by remote after TLS handshake")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := loopbackServerOptions(t)
			with, without := tt.setup(t, opts)
			srv := startServer(t, opts)
			cfg := Config{NATSURL: srv.ClientURL(), Replicas: 1}
			log := testr.NewWithInterface(t, testr.Options{})

			cfg.Auth = without
			if q, err := Open(testContext(t), cfg, log); err == nil {
				_ = q.Close()
				t.Fatal("Open without the credential succeeded, want the server to refuse it")
			} else if !tt.wantRefusal(err) {
				t.Fatalf("Open without the credential: %v, want the server's refusal", err)
			} else {
				t.Logf("Open without the credential: %v", err)
			}

			cfg.Auth = with
			q, err := Open(testContext(t), cfg, log)
			if err != nil {
				t.Fatalf("Open with the credential: %v", err)
			}
			t.Cleanup(func() {
				if err := q.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			ctx := testContext(t)
			if _, _, err := q.PublishEvent(ctx, "ns", EventDedupID("ns", "auth", "1"), []byte(eventData(1)), nil); err != nil {
				t.Fatalf("PublishEvent: %v", err)
			}
			c, err := q.EventConsumer(ctx, "router", ConsumerOptions{})
			if err != nil {
				t.Fatalf("EventConsumer: %v", err)
			}
			msgs := fetchN(t, ctx, c, 1, 10*time.Second)
			if got := string(msgs[0].Data); got != eventData(1) {
				t.Fatalf("consumed %q, want %q", got, eventData(1))
			}
			ackAll(t, ctx, msgs)
		})
	}
}

func isAuthorizationViolation(err error) bool { return errors.Is(err, nats.ErrAuthorization) }

// TestNATSAuthErrors checks that a misconfigured credential fails Open
// before any connection, naming the file and never quoting what is in it.
func TestNATSAuthErrors(t *testing.T) {
	const secret = "SUAPRIVATEDONOTPRINT"
	garbage := writeFile(t, "garbage", []byte(secret+"\n"))
	missing := filepath.Join(t.TempDir(), "absent")
	pki := newNATSTestPKI(t)
	cert := writeFile(t, "tls.crt", pki.clientPEM)
	otherKey := writeFile(t, "other.key", pki.serverKeyPEM)
	const url = "nats://127.0.0.1:1" // never dialled: every case fails first

	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error
	}{
		{"missing credentials file", Config{NATSURL: url, Auth: NATSAuth{CredentialsFile: missing}},
			[]string{"credentials file", missing, "no such file"}},
		{"credentials file without a JWT", Config{NATSURL: url, Auth: NATSAuth{CredentialsFile: garbage}},
			[]string{"credentials file", garbage, "no user JWT"}},
		{"missing seed file", Config{NATSURL: url, Auth: NATSAuth{NKeySeedFile: missing}},
			[]string{"NKey seed file", missing, "no such file"}},
		{"seed file without a seed", Config{NATSURL: url, Auth: NATSAuth{NKeySeedFile: garbage}},
			[]string{"NKey seed file", garbage}},
		{"empty CA file", Config{NATSURL: url, Auth: NATSAuth{CAFile: writeFile(t, "empty", nil)}},
			[]string{"TLS CA file", "is empty"}},
		{"CA file without a certificate", Config{NATSURL: url, Auth: NATSAuth{CAFile: garbage}},
			[]string{"TLS CA file", garbage, "no PEM certificate"}},
		{"missing client key", Config{NATSURL: url, Auth: NATSAuth{CertFile: cert, KeyFile: missing}},
			[]string{"TLS client key file", missing, "no such file"}},
		{"key of another certificate", Config{NATSURL: url, Auth: NATSAuth{CertFile: cert, KeyFile: otherKey}},
			[]string{"TLS client certificate", cert, "does not match"}},
		{"certificate without key", Config{NATSURL: url, Auth: NATSAuth{CertFile: cert}},
			[]string{"CertFile and NATSAuth.KeyFile must be set together"}},
		{"two identities", Config{NATSURL: url, Auth: NATSAuth{CredentialsFile: garbage, NKeySeedFile: garbage}},
			[]string{"not both"}},
		{"user in the URL and a credentials file", Config{NATSURL: "nats://herald:" + secret + "@127.0.0.1:1",
			Auth: NATSAuth{CredentialsFile: garbage}}, []string{"two identities", "redacted@127.0.0.1:1"}},
		{"credentials in embedded mode", Config{StoreDir: t.TempDir(), Auth: NATSAuth{NKeySeedFile: garbage}},
			[]string{"embedded server needs none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := Open(testContext(t), tt.cfg, testr.New(t))
			if err == nil {
				_ = q.Close()
				t.Fatal("Open succeeded, want an error")
			}
			t.Logf("Open: %v", err)
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error %q quotes a file's contents", err)
			}
		})
	}
}

// configureOperatorMode makes the server trust an operator with an account
// that may use JetStream, and returns the .creds file of a user of that
// account.
func configureOperatorMode(t *testing.T, opts *server.Options) []byte {
	t.Helper()
	operator := mustKeyPair(t, nkeys.CreateOperator)
	system := mustKeyPair(t, nkeys.CreateAccount)
	account := mustKeyPair(t, nkeys.CreateAccount)
	user := mustKeyPair(t, nkeys.CreateUser)

	operatorClaims := jwt.NewOperatorClaims(mustPublicKey(t, operator))
	operatorClaims.SystemAccount = mustPublicKey(t, system)
	operatorJWT := mustEncode(t, operatorClaims, operator)
	trusted, err := jwt.DecodeOperatorClaims(operatorJWT)
	if err != nil {
		t.Fatal(err)
	}
	accountClaims := jwt.NewAccountClaims(mustPublicKey(t, account))
	accountClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	resolver := &server.MemAccResolver{}
	for pub, claims := range map[string]jwt.Claims{
		mustPublicKey(t, system):  jwt.NewAccountClaims(mustPublicKey(t, system)),
		mustPublicKey(t, account): accountClaims,
	} {
		if err := resolver.Store(pub, mustEncode(t, claims, operator)); err != nil {
			t.Fatal(err)
		}
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{trusted}
	opts.SystemAccount = mustPublicKey(t, system)
	opts.AccountResolver = resolver

	userJWT := mustEncode(t, jwt.NewUserClaims(mustPublicKey(t, user)), account)
	seed, err := user.Seed()
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

func mustKeyPair(t *testing.T, create func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func mustPublicKey(t *testing.T, kp nkeys.KeyPair) string {
	t.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func mustEncode(t *testing.T, claims jwt.Claims, signer nkeys.KeyPair) string {
	t.Helper()
	token, err := claims.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// writeFile writes a credential file readable by its owner only, as the
// dispatcher's Secret volumes are.
func writeFile(t *testing.T, name string, contents []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, contents, 0o400); err != nil {
		t.Fatal(err)
	}
	return path
}

// natsTestPKI is a CA, a server certificate for 127.0.0.1 and a client
// certificate, PEM-encoded as cert-manager writes them into a Secret.
type natsTestPKI struct {
	caPEM, clientPEM, clientKeyPEM, serverKeyPEM []byte
	pool                                         *x509.CertPool
	server                                       tls.Certificate
}

func newNATSTestPKI(t *testing.T) natsTestPKI {
	t.Helper()
	newCert := func(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if parent == nil {
			parent, parentKey = tmpl, key // self-signed
		}
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	}
	ca, caKey, caPEM, _ := newCert(&x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "herald test NATS CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	_, _, serverPEM, serverKeyPEM := newCert(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}, ca, caKey)
	_, _, clientPEM, clientKeyPEM := newCert(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "herald-dispatcher"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	serverCert, err := tls.X509KeyPair(serverPEM, serverKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return natsTestPKI{caPEM: caPEM, clientPEM: clientPEM, clientKeyPEM: clientKeyPEM, serverKeyPEM: serverKeyPEM,
		pool: pool, server: serverCert}
}
