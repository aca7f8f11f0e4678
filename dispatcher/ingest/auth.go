package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/internal/fieldhash"
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
	// DefaultTokenDenyTTL is how long a rejected token is remembered. Longer
	// than DefaultDenyTTL because a token's rejection is final — a bad
	// signature, an expired token, the wrong audience, a deleted service
	// account never become valid — so only a flood of one bad token is
	// affected, and it costs one TokenReview per 10s instead of one per 2s.
	DefaultTokenDenyTTL = 10 * time.Second
	// DefaultCacheEntries bounds each decision cache; the least recently
	// used entries are dropped first.
	DefaultCacheEntries = 4096
)

// Defaults of ReviewLimit.
const (
	// DefaultTokenReviewRate bounds the TokenReviews made for tokens not in
	// the cache, per second. Valid tokens are reviewed once per
	// DefaultAllowTTL, so 50/s keeps 500 publishing identities (pods)
	// authenticated at once, while a flood of made-up tokens costs the API
	// server at most 50 reviews a second instead of one per request.
	DefaultTokenReviewRate = 50
	// DefaultTokenReviewBurst lets 100 new identities, say a Deployment
	// rolling out, authenticate at once.
	DefaultTokenReviewBurst = 100
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
	// DenyTTL is how long a negative decision is cached; default 2s
	// (DefaultTokenDenyTTL, 10s, for rejected tokens).
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
// Concurrent and back-to-back look-ups of one key make one review.
func (c *decisionCache) get(ctx context.Context, key string, review func(context.Context) (value any, allowed bool, err error)) (any, error) {
	if v, ok := c.lru.Get(key); ok {
		return v, nil
	}
	v, err, _ := c.flight.Do(key, func() (any, error) {
		// A flight that ended between the look-up above and this one
		// cached its answer already.
		if v, ok := c.lru.Get(key); ok {
			return v, nil
		}
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

// ReviewLimit bounds the TokenReviews an authenticator makes for tokens it
// has no cached decision for. Zero fields take the defaults.
type ReviewLimit struct {
	// Rate is the sustained TokenReviews per second; default 50.
	Rate float64
	// Burst is how many may be made at once; default 100.
	Burst int
}

// ErrTokenReviewThrottled is returned by AuthenticateToken when a token
// would need a TokenReview and the ReviewLimit is spent; ingest answers 429
// with Retry-After and does not call the API server.
var ErrTokenReviewThrottled = errors.New("too many TokenReviews")

// TokenReviewThrottledError is ErrTokenReviewThrottled with the wait until
// a review is possible again.
type TokenReviewThrottledError struct {
	RetryAfter time.Duration
}

func (e *TokenReviewThrottledError) Error() string { return ErrTokenReviewThrottled.Error() }

// Is makes errors.Is(err, ErrTokenReviewThrottled) hold.
func (e *TokenReviewThrottledError) Is(target error) bool { return target == ErrTokenReviewThrottled }

// TokenReviewAuthenticator authenticates bearer tokens with the Kubernetes
// TokenReview API for one audience, caching the decisions briefly and
// bounding the rate of reviews.
type TokenReviewAuthenticator struct {
	client   kubernetes.Interface
	audience string
	cache    *decisionCache
	clock    cache.Clock
	reviews  *rate.Limiter
}

// NewTokenReviewAuthenticator returns an Authenticator that accepts tokens
// the API server validates for audience (DefaultAudience, "herald.dev", when
// empty). Rejected tokens are cached for DefaultTokenDenyTTL unless
// opts.DenyTTL says otherwise. The dispatcher needs create on
// tokenreviews.authentication.k8s.io.
func NewTokenReviewAuthenticator(client kubernetes.Interface, audience string, opts CacheOptions, limit ReviewLimit) *TokenReviewAuthenticator {
	return newTokenReviewAuthenticator(client, audience, opts, limit, nil)
}

func newTokenReviewAuthenticator(client kubernetes.Interface, audience string, opts CacheOptions, limit ReviewLimit, clock cache.Clock) *TokenReviewAuthenticator {
	if audience == "" {
		audience = heraldv1alpha1.DefaultAudience
	}
	if opts.DenyTTL <= 0 {
		opts.DenyTTL = DefaultTokenDenyTTL
	}
	if limit.Rate <= 0 {
		limit.Rate = DefaultTokenReviewRate
	}
	if limit.Burst <= 0 {
		limit.Burst = DefaultTokenReviewBurst
	}
	if clock == nil {
		clock = realClock{}
	}
	return &TokenReviewAuthenticator{
		client:   client,
		audience: audience,
		cache:    newDecisionCache(opts, clock),
		clock:    clock,
		reviews:  rate.NewLimiter(rate.Limit(limit.Rate), limit.Burst),
	}
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
	// The cache is keyed by the token's hash, so that a token never sits
	// in memory longer than its request.
	v, err := a.cache.get(ctx, fieldhash.Hex("herald-ingest-token/v1", a.audience, token), func(ctx context.Context) (any, bool, error) {
		if wait := reserve(a.reviews, a.clock.Now()); wait > 0 {
			return nil, false, &TokenReviewThrottledError{RetryAfter: wait}
		}
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
	return fieldhash.Hex("herald-ingest-sar/v1", fields...)
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
