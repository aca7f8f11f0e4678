package pki

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CABundleKey is the key of the PEM trust bundle in every Secret the Keeper
// writes, as in Secrets cert-manager writes and in kube-root-ca.crt.
const CABundleKey = "ca.crt"

// Serving is one serving certificate a Keeper keeps.
type Serving struct {
	// SecretName is the kubernetes.io/tls Secret holding it.
	SecretName string
	// Hosts are its DNS names and IP addresses.
	Hosts []string
}

// Keeper keeps a CA Secret and serving-certificate Secrets signed by that
// CA, all kubernetes.io/tls, in one namespace. Each Ensure creates what is
// missing or invalid and renews what is due (RenewAt), and returns when to
// call it again.
//
// CA rotation: when the CA is due, a new one is created and the previous
// one stays in the trust bundle (ca.crt of every Secret) until it expires.
// Serving certificates the previous CA signed are kept until their own
// renewal, which always falls before the previous CA expires (a
// certificate never outlives its CA, and a CA is due a third of its
// lifetime before it expires). So clients that reload the bundle (a
// mounted ConfigMap does) trust the new CA long before any server presents
// a certificate it signed. Deleting the CA Secret rotates at once and
// drops the previous CA (for a compromised key); clients then fail until
// their bundle updates.
type Keeper struct {
	// Reader reads the Secrets. The manager passes its API reader: the
	// Secrets are read on change and when due, not cached.
	Reader client.Reader
	// Client applies the Secrets (server-side apply).
	Client client.Client
	// FieldOwner is the server-side apply field manager.
	FieldOwner client.FieldOwner
	// Namespace of every Secret.
	Namespace string
	// CASecretName is the Secret of the CA: tls.crt and tls.key are the
	// CA, ca.crt the trust bundle.
	CASecretName string
	// CACommonName is the subject of a new CA.
	CACommonName string
	// Labels are set on every Secret.
	Labels map[string]string
	// Clock tells the time; tests step it to renewal. Nil is the real
	// clock.
	Clock clock.PassiveClock
	// CALifetime and ServingLifetime default to DefaultCALifetime and
	// DefaultServingLifetime.
	CALifetime, ServingLifetime time.Duration
}

// Result is what Ensure left in place.
type Result struct {
	// CABundle is the PEM trust bundle clients should use.
	CABundle []byte
	// RenewAt is the earliest time a certificate is due: call Ensure
	// again then.
	RenewAt time.Time
}

// Ensure makes the CA and the serving certificates exist, valid and not
// due, writing only the Secrets that change.
func (k *Keeper) Ensure(ctx context.Context, serving ...Serving) (Result, error) {
	now := k.now()
	ca, bundle, err := k.ensureCA(ctx, now)
	if err != nil {
		return Result{}, err
	}
	res := Result{CABundle: bundle, RenewAt: RenewAt(ca.Cert)}
	roots := x509.NewCertPool()
	for _, c := range ParseCertificates(bundle) {
		roots.AddCert(c)
	}
	for _, s := range serving {
		renewAt, err := k.ensureServing(ctx, now, ca, bundle, roots, s)
		if err != nil {
			return Result{}, err
		}
		if renewAt.Before(res.RenewAt) {
			res.RenewAt = renewAt
		}
	}
	return res, nil
}

func (k *Keeper) now() time.Time {
	if k.Clock == nil {
		return time.Now()
	}
	return k.Clock.Now()
}

// ensureCA returns the current CA and the trust bundle, creating or
// rotating the CA when it is missing, invalid or due.
func (k *Keeper) ensureCA(ctx context.Context, now time.Time) (*CA, []byte, error) {
	existing, err := k.get(ctx, k.CASecretName)
	if err != nil {
		return nil, nil, err
	}
	ca, parseErr := ParseCA(existing.Data[corev1.TLSCertKey], existing.Data[corev1.TLSPrivateKeyKey])
	var previous []byte
	if parseErr == nil && now.Before(RenewAt(ca.Cert)) {
		previous = existing.Data[CABundleKey]
	} else {
		lifetime := k.CALifetime
		if lifetime == 0 {
			lifetime = DefaultCALifetime
		}
		if parseErr == nil {
			// Due, not broken: the old CA stays trusted until it expires.
			previous = slices.Concat(ca.CertPEM(), existing.Data[CABundleKey])
		}
		if ca, err = NewCA(k.CACommonName, now, lifetime); err != nil {
			return nil, nil, err
		}
	}
	bundle := Bundle(now, ca.Cert, previous)
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, nil, err
	}
	// The key is re-encoded the same way every time (PKCS#8), so an
	// unchanged CA compares equal.
	want := map[string][]byte{corev1.TLSCertKey: ca.CertPEM(), corev1.TLSPrivateKeyKey: keyPEM, CABundleKey: bundle}
	if err := k.apply(ctx, k.CASecretName, existing, want); err != nil {
		return nil, nil, err
	}
	return ca, bundle, nil
}

// ensureServing keeps one serving certificate and returns when it is due.
func (k *Keeper) ensureServing(ctx context.Context, now time.Time, ca *CA, bundle []byte, roots *x509.CertPool, s Serving) (time.Time, error) {
	existing, err := k.get(ctx, s.SecretName)
	if err != nil {
		return time.Time{}, err
	}
	certPEM, keyPEM := existing.Data[corev1.TLSCertKey], existing.Data[corev1.TLSPrivateKeyKey]
	cert, _, parseErr := ParseKeyPair(certPEM, keyPEM)
	if parseErr != nil || !servingValid(cert, now, roots, s.Hosts) {
		lifetime := k.ServingLifetime
		if lifetime == 0 {
			lifetime = DefaultServingLifetime
		}
		if certPEM, keyPEM, err = ca.Issue(s.Hosts, now, lifetime); err != nil {
			return time.Time{}, err
		}
		cert = ParseCertificates(certPEM)[0]
	}
	want := map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM, CABundleKey: bundle}
	if err := k.apply(ctx, s.SecretName, existing, want); err != nil {
		return time.Time{}, err
	}
	return RenewAt(cert), nil
}

// servingValid reports whether cert can be served on: signed by a trusted
// CA, for exactly these hosts, and not due.
func servingValid(cert *x509.Certificate, now time.Time, roots *x509.CertPool, hosts []string) bool {
	if !now.Before(RenewAt(cert)) {
		return false
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false
	}
	have := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		have = append(have, ip.String())
	}
	want := slices.Clone(hosts)
	slices.Sort(have)
	slices.Sort(want)
	return slices.Equal(have, slices.Compact(want))
}

// get returns a Secret, an empty one when it does not exist.
func (k *Keeper) get(ctx context.Context, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	err := k.Reader.Get(ctx, client.ObjectKey{Namespace: k.Namespace, Name: name}, s)
	if apierrors.IsNotFound(err) {
		return &corev1.Secret{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get Secret %s/%s: %w", k.Namespace, name, err)
	}
	return s, nil
}

// apply writes a Secret unless it already holds want and the labels.
func (k *Keeper) apply(ctx context.Context, name string, existing *corev1.Secret, want map[string][]byte) error {
	labelsKept := true
	for key, value := range k.Labels {
		if existing.Labels[key] != value {
			labelsKept = false
		}
	}
	if labelsKept && existing.Type == corev1.SecretTypeTLS && maps.EqualFunc(existing.Data, want, bytes.Equal) {
		return nil
	}
	secret := corev1ac.Secret(name, k.Namespace).
		WithLabels(k.Labels).
		WithType(corev1.SecretTypeTLS).
		WithData(want)
	if err := k.Client.Apply(ctx, secret, k.FieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("apply Secret %s/%s: %w", k.Namespace, name, err)
	}
	return nil
}
