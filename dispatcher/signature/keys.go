package signature

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Prefixes of the Standard Webhooks key encodings.
const (
	HMACPrefix       = "whsec_"
	Ed25519SecretPfx = "whsk_"
	Ed25519PublicPfx = "whpk_"
)

// KeyKind tells what a parsed key can do.
type KeyKind int

const (
	// KindHMAC is a symmetric HMAC-SHA256 secret: it signs and verifies.
	KindHMAC KeyKind = iota + 1
	// KindEd25519Private signs (and verifies through its public half).
	KindEd25519Private
	// KindEd25519Public only verifies.
	KindEd25519Public
)

// Key is a decoded Standard Webhooks key. Its String method never reveals
// the material.
type Key struct {
	Kind    KeyKind
	HMAC    []byte
	Private ed25519.PrivateKey
	Public  ed25519.PublicKey
}

// String never reveals key material.
func (k Key) String() string { return "signature.Key{redacted}" }

// GoString never reveals key material.
func (k Key) GoString() string { return k.String() }

// ErrInvalidKey is returned (wrapped) for a key that cannot be decoded. The
// error text describes the problem but never includes the key.
var ErrInvalidKey = errors.New("invalid signing key")

// HMAC secrets shorter than this are refused: Standard Webhooks recommends
// 24 to 64 bytes.
const (
	minHMACBytes = 24
	maxHMACBytes = 64
)

// NewHMACSecret returns a new "whsec_" secret of 32 random bytes.
func NewHMACSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate signing secret: %w", err)
	}
	return HMACPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// NewEd25519Key returns a new Ed25519 key pair as "whsk_" (the 64-byte
// private key) and "whpk_" (the 32-byte public key).
func NewEd25519Key() (secretKey, publicKey string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate ed25519 key: %w", err)
	}
	return Ed25519SecretPfx + base64.StdEncoding.EncodeToString(priv),
		Ed25519PublicPfx + base64.StdEncoding.EncodeToString(pub), nil
}

// PublicKeyOf returns the "whpk_" public key of a "whsk_" private key.
func PublicKeyOf(secretKey string) (string, error) {
	k, err := ParseKey(secretKey)
	if err != nil {
		return "", err
	}
	if k.Kind != KindEd25519Private {
		return "", fmt.Errorf("%w: not an Ed25519 private key (want prefix %s)", ErrInvalidKey, Ed25519SecretPfx)
	}
	return Ed25519PublicPfx + base64.StdEncoding.EncodeToString(k.Public), nil
}

// ParseKey decodes "whsec_…", "whsk_…" or "whpk_…". A string without a
// known prefix is read as a base64 HMAC secret, as the reference libraries
// do.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(s, Ed25519SecretPfx):
		b, err := decode(s[len(Ed25519SecretPfx):])
		if err != nil {
			return Key{}, fmt.Errorf("%w: %s key is not valid base64", ErrInvalidKey, Ed25519SecretPfx)
		}
		if len(b) != ed25519.PrivateKeySize {
			return Key{}, fmt.Errorf("%w: %s key must decode to %d bytes, got %d", ErrInvalidKey, Ed25519SecretPfx, ed25519.PrivateKeySize, len(b))
		}
		priv := ed25519.PrivateKey(b)
		if !ed25519.NewKeyFromSeed(priv.Seed()).Equal(priv) {
			return Key{}, fmt.Errorf("%w: %s key's public half does not belong to its seed", ErrInvalidKey, Ed25519SecretPfx)
		}
		return Key{Kind: KindEd25519Private, Private: priv, Public: priv.Public().(ed25519.PublicKey)}, nil
	case strings.HasPrefix(s, Ed25519PublicPfx):
		b, err := decode(s[len(Ed25519PublicPfx):])
		if err != nil {
			return Key{}, fmt.Errorf("%w: %s key is not valid base64", ErrInvalidKey, Ed25519PublicPfx)
		}
		if len(b) != ed25519.PublicKeySize {
			return Key{}, fmt.Errorf("%w: %s key must decode to %d bytes, got %d", ErrInvalidKey, Ed25519PublicPfx, ed25519.PublicKeySize, len(b))
		}
		return Key{Kind: KindEd25519Public, Public: ed25519.PublicKey(b)}, nil
	default:
		b, err := decode(strings.TrimPrefix(s, HMACPrefix))
		if err != nil {
			return Key{}, fmt.Errorf("%w: %s secret is not valid base64", ErrInvalidKey, HMACPrefix)
		}
		if len(b) < minHMACBytes || len(b) > maxHMACBytes {
			return Key{}, fmt.Errorf("%w: %s secret must decode to %d to %d bytes, got %d", ErrInvalidKey, HMACPrefix, minHMACBytes, maxHMACBytes, len(b))
		}
		return Key{Kind: KindHMAC, HMAC: b}, nil
	}
}

func decode(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}
