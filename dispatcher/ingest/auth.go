package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

// The permission a publisher needs: create events.herald.dev in the
// namespace it publishes to.
const (
	PublishVerb     = "create"
	PublishGroup    = "herald.dev"
	PublishResource = "events"
)

// Defaults of CacheOptions.
const (
	// DefaultAllowTTL is how long a successful authentication or an allowed
	// authorization is reused. It bounds how long a revoked token or
	// RoleBinding keeps working at ingest.
	DefaultAllowTTL = 10 * time.Second
	// DefaultDenyTTL is how long a rejected token or a denied authorization
	// is reused: short, so a RoleBinding created just now takes effect
	// almost at once, yet long enough that a client retrying in a tight loop
	// does not turn every request into an API call.
	DefaultDenyTTL = 2 * time.Second
	// DefaultCacheEntries bounds each decision cache; the least recently
	// used entries are dropped first.
	DefaultCacheEntries = 4096
)

// maxTokenBytes bounds the bearer tokens sent to TokenReview; Kubernetes
// service account tokens are around 1 KiB.
const maxTokenBytes = 16 << 10

// Authenticator establishes who sent a bearer token.
type Authenticator interface {
	// AuthenticateToken returns the identity the token proves. An invalid,
	// expired or wrong-audience token yields an *UnauthenticatedError; any
	// other error means the decision could not be made (the request is
	// answered 503).
	AuthenticateToken(ctx context.Context, token string) (authenticationv1.UserInfo, error)
}

// Authorizer decides whether a user may publish events to a namespace.
type Authorizer interface {
	// AuthorizePublish reports whether user may create events.herald.dev in
	// namespace, with a reason when it may not. An error means the decision
	// could not be made (the request is answered 503).
	AuthorizePublish(ctx context.Context, user authenticationv1.UserInfo, namespace string) (allowed bool, reason string, err error)
}

// UnauthenticatedError is returned by an Authenticator for a token that does
// not prove an identity; ingest answers 401 with its message, which never
// contains the token.
type UnauthenticatedError struct {
	Reason string
}

func (e *UnauthenticatedError) Error() string { return e.Reason }

// CacheOptions tune how long authentication and authorization decisions are
// reused. Zero fields take the defaults.
type CacheOptions struct {
	// AllowTTL is how long a positive decision is cached; default 10s.
	AllowTTL time.Duration
	// DenyTTL is how long a negative decision is cached; default 2s.
	DenyTTL time.Duration
	// MaxEntries bounds the cache; default 4096.
	MaxEntries int
}

func (o CacheOptions) withDefaults() CacheOptions {
	if o.AllowTTL <= 0 {
		o.AllowTTL = DefaultAllowTTL
	}
	if o.DenyTTL <= 0 {
		o.DenyTTL = DefaultDenyTTL
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultCacheEntries
	}
	return o
}

// decisionCache caches decisions under a hashed key and collapses concurrent
// look-ups of the same key into one API call.
type decisionCache struct {
	opts   CacheOptions
	lru    *cache.LRUExpireCache
	flight singleflight.Group
}

func newDecisionCache(opts CacheOptions, clock cache.Clock) *decisionCache {
	opts = opts.withDefaults()
	if clock == nil {
		clock = realClock{}
	}
	return &decisionCache{opts: opts, lru: cache.NewLRUExpireCacheWithClock(opts.MaxEntries, clock)}
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// get returns the cached value for key or computes it with review, caching
// the result for AllowTTL or DenyTTL as allowed says. Errors are not cached.
func (c *decisionCache) get(ctx context.Context, key string, review func(context.Context) (value any, allowed bool, err error)) (any, error) {
	if v, ok := c.lru.Get(key); ok {
		return v, nil
	}
	v, err, _ := c.flight.Do(key, func() (any, error) {
		// The review is shared by concurrent callers, so it must not end
		// when the first caller's request does.
		reviewCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		value, allowed, err := review(reviewCtx)
		if err != nil {
			return nil, err
		}
		ttl := c.opts.DenyTTL
		if allowed {
			ttl = c.opts.AllowTTL
		}
		c.lru.Add(key, value, ttl)
		return value, nil
	})
	return v, err
}

// reviewTimeout bounds one TokenReview or SubjectAccessReview call.
const reviewTimeout = 10 * time.Second

// hashKey derives a cache key from fields: SHA-256 over length-prefixed
// fields, so a token never sits in memory longer than the request, and
// distinct field lists never collide.
func hashKey(domain string, fields ...string) string {
	h := sha256.New()
	var length [8]byte
	for _, f := range append([]string{domain}, fields...) {
		binary.BigEndian.PutUint64(length[:], uint64(len(f)))
		h.Write(length[:])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TokenReviewAuthenticator authenticates bearer tokens with the Kubernetes
// TokenReview API for one audience, caching the decisions briefly.
type TokenReviewAuthenticator struct {
	client   kubernetes.Interface
	audience string
	cache    *decisionCache
}

// NewTokenReviewAuthenticator returns an Authenticator that accepts tokens
// the API server validates for audience (DefaultAudience, "herald.dev", when
// empty). The dispatcher needs create on tokenreviews.authentication.k8s.io.
func NewTokenReviewAuthenticator(client kubernetes.Interface, audience string, opts CacheOptions) *TokenReviewAuthenticator {
	return newTokenReviewAuthenticator(client, audience, opts, nil)
}

func newTokenReviewAuthenticator(client kubernetes.Interface, audience string, opts CacheOptions, clock cache.Clock) *TokenReviewAuthenticator {
	if audience == "" {
		audience = heraldv1alpha1.DefaultAudience
	}
	return &TokenReviewAuthenticator{client: client, audience: audience, cache: newDecisionCache(opts, clock)}
}

// Audience is the token audience this authenticator requires.
func (a *TokenReviewAuthenticator) Audience() string { return a.audience }

// tokenReviewResult is what the authentication cache holds.
type tokenReviewResult struct {
	user   authenticationv1.UserInfo
	reason string // non-empty when the token was rejected
}

// AuthenticateToken implements Authenticator.
func (a *TokenReviewAuthenticator) AuthenticateToken(ctx context.Context, token string) (authenticationv1.UserInfo, error) {
	if len(token) > maxTokenBytes {
		return authenticationv1.UserInfo{}, &UnauthenticatedError{Reason: fmt.Sprintf("bearer token is longer than %d bytes", maxTokenBytes)}
	}
	v, err := a.cache.get(ctx, hashKey("herald-ingest-token/v1", a.audience, token), func(ctx context.Context) (any, bool, error) {
		return a.review(ctx, token)
	})
	if err != nil {
		return authenticationv1.UserInfo{}, err
	}
	result := v.(tokenReviewResult)
	if result.reason != "" {
		return authenticationv1.UserInfo{}, &UnauthenticatedError{Reason: result.reason}
	}
	return result.user, nil
}

func (a *TokenReviewAuthenticator) review(ctx context.Context, token string) (any, bool, error) {
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{a.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, false, fmt.Errorf("create TokenReview: %w", err)
	}
	status := tr.Status
	if !status.Authenticated {
		reason := "token is invalid or expired"
		if status.Error != "" {
			// The API server's reason (for instance a wrong audience) helps
			// the publisher; redact the token in case an authenticator
			// webhook echoes it.
			reason = fmt.Sprintf("token rejected: %s", firstLine(strings.ReplaceAll(status.Error, token, "<redacted>")))
		}
		return tokenReviewResult{reason: reason}, false, nil
	}
	// A TokenReview server that ignores spec.audiences would accept tokens
	// minted for anything; the audience must come back in the status.
	if !slices.Contains(status.Audiences, a.audience) {
		return tokenReviewResult{reason: fmt.Sprintf("token is not valid for audience %q", a.audience)}, false, nil
	}
	return tokenReviewResult{user: status.User}, true, nil
}

// SubjectAccessReviewAuthorizer authorizes publishers with the Kubernetes
// SubjectAccessReview API (create events.herald.dev in the namespace),
// caching the decisions briefly.
type SubjectAccessReviewAuthorizer struct {
	client kubernetes.Interface
	cache  *decisionCache
}

// NewSubjectAccessReviewAuthorizer returns an Authorizer backed by
// SubjectAccessReview. The dispatcher needs create on
// subjectaccessreviews.authorization.k8s.io.
func NewSubjectAccessReviewAuthorizer(client kubernetes.Interface, opts CacheOptions) *SubjectAccessReviewAuthorizer {
	return newSubjectAccessReviewAuthorizer(client, opts, nil)
}

func newSubjectAccessReviewAuthorizer(client kubernetes.Interface, opts CacheOptions, clock cache.Clock) *SubjectAccessReviewAuthorizer {
	return &SubjectAccessReviewAuthorizer{client: client, cache: newDecisionCache(opts, clock)}
}

type accessReviewResult struct {
	allowed bool
	reason  string
}

// AuthorizePublish implements Authorizer.
func (a *SubjectAccessReviewAuthorizer) AuthorizePublish(ctx context.Context, user authenticationv1.UserInfo, namespace string) (bool, string, error) {
	v, err := a.cache.get(ctx, accessReviewKey(user, namespace), func(ctx context.Context) (any, bool, error) {
		return a.review(ctx, user, namespace)
	})
	if err != nil {
		return false, "", err
	}
	result := v.(accessReviewResult)
	return result.allowed, result.reason, nil
}

func (a *SubjectAccessReviewAuthorizer) review(ctx context.Context, user authenticationv1.UserInfo, namespace string) (any, bool, error) {
	var extra map[string]authorizationv1.ExtraValue
	if len(user.Extra) > 0 {
		extra = make(map[string]authorizationv1.ExtraValue, len(user.Extra))
		for k, v := range user.Extra {
			extra[k] = authorizationv1.ExtraValue(v)
		}
	}
	sar, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace,
				Verb:      PublishVerb,
				Group:     PublishGroup,
				Resource:  PublishResource,
			},
			User:   user.Username,
			UID:    user.UID,
			Groups: user.Groups,
			Extra:  extra,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, false, fmt.Errorf("create SubjectAccessReview: %w", err)
	}
	result := accessReviewResult{allowed: sar.Status.Allowed && !sar.Status.Denied, reason: firstLine(sar.Status.Reason)}
	return result, result.allowed, nil
}

// accessReviewKey identifies a SubjectAccessReview: the whole identity (user,
// uid, groups, extra) and the namespace.
func accessReviewKey(user authenticationv1.UserInfo, namespace string) string {
	fields := []string{namespace, user.Username, user.UID, fmt.Sprint(len(user.Groups))}
	fields = append(fields, user.Groups...)
	keys := make([]string, 0, len(user.Extra))
	for k := range user.Extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fields = append(fields, k, fmt.Sprint(len(user.Extra[k])))
		fields = append(fields, user.Extra[k]...)
	}
	return hashKey("herald-ingest-sar/v1", fields...)
}

// errNoBearerToken and errMalformedAuthorization are 401 reasons.
var (
	errNoBearerToken          = errors.New(`missing bearer token: send "Authorization: Bearer <token>" with a Kubernetes service account token`)
	errMalformedAuthorization = errors.New(`malformed Authorization header: expected "Bearer <token>"`)
)

// bearerToken extracts the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, error) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return "", errNoBearerToken
	}
	if len(values) > 1 {
		return "", errMalformedAuthorization
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" || strings.ContainsAny(token, " \t") {
		return "", errMalformedAuthorization
	}
	return token, nil
}
