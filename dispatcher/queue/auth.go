package queue

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// NATSAuth names the files holding an external NATS server's credentials and
// TLS material: in a cluster, keys of Secrets mounted into the dispatcher's
// pod, so that nothing secret sits in the Deployment's spec. Every field is
// optional.
//
// Open reads each file once to fail early, with an error naming the file
// (never its contents) when one is missing, unreadable or malformed. The NATS
// client reads them again on every reconnect, so a rotated Secret — a
// certificate cert-manager renewed, a reissued user JWT — is picked up
// without restarting the dispatcher.
type NATSAuth struct {
	// CredentialsFile is a .creds file holding a user JWT and its NKey seed
	// (decentralized JWT authentication, as `nsc generate creds` writes it).
	CredentialsFile string
	// NKeySeedFile holds the seed of an NKey user (a line starting with
	// "SU"). Mutually exclusive with CredentialsFile, which carries its own
	// seed.
	NKeySeedFile string
	// CAFile holds the PEM certificates of the authorities that sign the
	// server's certificate; empty trusts the system's roots.
	CAFile string
	// CertFile and KeyFile hold the PEM client certificate and key presented
	// to a server that verifies clients (TLS verify); set both or neither.
	CertFile string
	KeyFile  string
}

// IsZero reports whether no file is set.
func (a NATSAuth) IsZero() bool { return a == NATSAuth{} }

// validate checks the combination of fields (not the files) against the
// server URLs, which may carry credentials of their own.
func (a NATSAuth) validate(urls string) error {
	if a.CredentialsFile != "" && a.NKeySeedFile != "" {
		return errors.New("queue config: set NATSAuth.CredentialsFile or NATSAuth.NKeySeedFile, not both: a .creds file carries its own seed")
	}
	if (a.CertFile == "") != (a.KeyFile == "") {
		return errors.New("queue config: NATSAuth.CertFile and NATSAuth.KeyFile must be set together")
	}
	if (a.CredentialsFile != "" || a.NKeySeedFile != "") && URLsCarryUserInfo(urls) {
		return fmt.Errorf("queue config: %s carries a user or token and NATSAuth a credentials or seed file: "+
			"the server would see two identities; keep only the file", redactURLs(urls))
	}
	return nil
}

// options reads and checks every file and returns the client options that
// authenticate with them.
func (a NATSAuth) options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.CredentialsFile != "" {
		if err := checkCredentialsFile(a.CredentialsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(a.CredentialsFile))
	}
	if a.NKeySeedFile != "" {
		if _, err := readAuthFile("NKey seed", a.NKeySeedFile); err != nil {
			return nil, err
		}
		opt, err := nats.NkeyOptionFromSeed(a.NKeySeedFile)
		if err != nil {
			// nkeys' errors are fixed sentences, never the seed itself.
			return nil, fmt.Errorf("NATS NKey seed file %q: %w", a.NKeySeedFile, err)
		}
		opts = append(opts, opt)
	}
	if a.CAFile != "" {
		pem, err := readAuthFile("TLS CA", a.CAFile)
		if err != nil {
			return nil, err
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("NATS TLS CA file %q holds no PEM certificate", a.CAFile)
		}
		opts = append(opts, nats.RootCAs(a.CAFile))
	}
	if a.CertFile != "" {
		if _, err := readAuthFile("TLS client certificate", a.CertFile); err != nil {
			return nil, err
		}
		if _, err := readAuthFile("TLS client key", a.KeyFile); err != nil {
			return nil, err
		}
		if _, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile); err != nil {
			// crypto/tls describes what is wrong (no PEM data, key does not
			// match), never the key.
			return nil, fmt.Errorf("NATS TLS client certificate %q and key %q: %w", a.CertFile, a.KeyFile, err)
		}
		opts = append(opts, nats.ClientCert(a.CertFile, a.KeyFile))
	}
	return opts, nil
}

// checkCredentialsFile checks that a .creds file holds a user JWT and a user
// seed, so a wrong file (a bare seed, an account's JWT) fails at start-up
// with a clear error instead of as an authorization violation.
func checkCredentialsFile(path string) error {
	contents, err := readAuthFile("credentials", path)
	if err != nil {
		return err
	}
	defer clear(contents)
	token, err := nkeys.ParseDecoratedJWT(contents)
	if err == nil {
		_, err = jwt.DecodeUserClaims(token)
	}
	if err != nil {
		// The decoder's errors may quote the token; name the file only.
		return fmt.Errorf("NATS credentials file %q holds no user JWT (want a .creds file as `nsc generate creds` writes it)", path)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(contents)
	if err != nil {
		return fmt.Errorf("NATS credentials file %q: %w", path, err)
	}
	kp.Wipe()
	return nil
}

// readAuthFile reads one credential file. Its error names what the file is
// for and its path, and says why it could not be read.
func readAuthFile(what, path string) ([]byte, error) {
	contents, err := os.ReadFile(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err // the path is in the message already
		}
		return nil, fmt.Errorf("NATS %s file %q: %w", what, path, err)
	}
	if len(strings.TrimSpace(string(contents))) == 0 {
		return nil, fmt.Errorf("NATS %s file %q is empty", what, path)
	}
	return contents, nil
}

// URLsCarryUserInfo reports whether any URL of a comma-separated list of
// NATS server URLs holds a user, password or token: credentials that end up
// wherever the URL is written down (a Deployment's arguments, logs).
func URLsCarryUserInfo(urls string) bool {
	for _, p := range strings.Split(urls, ",") {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			return true
		}
	}
	return false
}
