package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

// requestCounter counts the API requests of a client by path suffix.
type requestCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

type countingTransport struct {
	next    http.RoundTripper
	counter *requestCounter
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.counter.mu.Lock()
	c.counter.counts[r.Method+" "+r.URL.Path]++
	c.counter.mu.Unlock()
	return c.next.RoundTrip(r)
}

const (
	tokenReviewPath  = "POST /apis/authentication.k8s.io/v1/tokenreviews"
	accessReviewPath = "POST /apis/authorization.k8s.io/v1/subjectaccessreviews"
)

func (c *requestCounter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[key]
}

// countingClient returns a clientset for the envtest API server whose
// requests are counted.
func countingClient(t testing.TB) (kubernetes.Interface, *requestCounter) {
	t.Helper()
	counter := &requestCounter{counts: map[string]int{}}
	cfg := rest.CopyConfig(testREST)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, counter: counter} }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return client, counter
}

func createNamespace(t testing.TB, prefix string) string {
	t.Helper()
	ns, err := testKube.CoreV1().Namespaces().Create(testContext(t), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

func createServiceAccount(t testing.TB, namespace, name string) {
	t.Helper()
	_, err := testKube.CoreV1().ServiceAccounts(namespace).Create(testContext(t), &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service account %s/%s: %v", namespace, name, err)
	}
}

// publisherRule is the RBAC grant to publish, as config/rbac/publisher_role
// defines it.
var publisherRule = rbacv1.PolicyRule{APIGroups: []string{"herald.dev"}, Resources: []string{"events"}, Verbs: []string{"create"}}

// grantPublish lets a service account publish in namespace with a Role and
// RoleBinding, and waits until authorization reflects it.
func grantPublish(t testing.TB, namespace, serviceAccount string) {
	t.Helper()
	ctx := testContext(t)
	if _, err := testKube.RbacV1().Roles(namespace).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "herald-publisher"},
		Rules:      []rbacv1.PolicyRule{publisherRule},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create role: %v", err)
	}
	if _, err := testKube.RbacV1().RoleBindings(namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "herald-publisher-" + serviceAccount},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "herald-publisher"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: serviceAccount, Namespace: namespace}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create role binding: %v", err)
	}
	waitAllowed(t, fmt.Sprintf("system:serviceaccount:%s:%s", namespace, serviceAccount), namespace)
}

// waitAllowed polls SubjectAccessReview (uncached) until the RBAC
// authorizer's informers have seen a new grant.
func waitAllowed(t testing.TB, user, namespace string) {
	t.Helper()
	ctx := testContext(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		sar, err := testKube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               user,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: namespace, Verb: "create", Group: "herald.dev", Resource: "events"},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview: %v", err)
		}
		if sar.Status.Allowed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not allowed to create events.herald.dev in %s within 10s", user, namespace)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mintToken requests a token for a service account with the TokenRequest
// API (the shortest lifetime it allows is 10 minutes).
func mintToken(t testing.TB, namespace, serviceAccount, audience string) string {
	t.Helper()
	tr, err := testKube.CoreV1().ServiceAccounts(namespace).CreateToken(testContext(t), serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", namespace, serviceAccount, err)
	}
	return tr.Status.Token
}

// waitTokenReview polls TokenReview (uncached) until the token's
// authentication is as wanted: the API server looks service accounts up
// through an informer, so a new or deleted account takes a moment.
func waitTokenReview(t testing.TB, token string, authenticated bool) {
	t.Helper()
	ctx := testContext(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		tr, err := testKube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{heraldv1alpha1.DefaultAudience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenReview: %v", err)
		}
		if tr.Status.Authenticated == authenticated {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("token authenticated=%v, want %v within 10s (%s)", tr.Status.Authenticated, authenticated, tr.Status.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// authFixture is a secure Handler against the envtest API server, with
// counted API calls and a fake clock for the decision caches.
type authFixture struct {
	*fixture
	namespace string
	counter   *requestCounter
	clock     *clocktesting.FakeClock
	// publisherToken may publish in namespace; bystanderToken may not.
	publisherToken, bystanderToken string
}

func newAuthFixture(t *testing.T) *authFixture {
	t.Helper()
	af := &authFixture{namespace: createNamespace(t, "ingest-auth"), clock: clocktesting.NewFakeClock(time.Now())}
	createServiceAccount(t, af.namespace, "publisher")
	createServiceAccount(t, af.namespace, "bystander")
	grantPublish(t, af.namespace, "publisher")
	af.publisherToken = mintToken(t, af.namespace, "publisher", heraldv1alpha1.DefaultAudience)
	af.bystanderToken = mintToken(t, af.namespace, "bystander", heraldv1alpha1.DefaultAudience)
	waitTokenReview(t, af.publisherToken, true)
	waitTokenReview(t, af.bystanderToken, true)

	var client kubernetes.Interface
	client, af.counter = countingClient(t)
	f := &fixture{q: openQueue(t), registry: prometheus.NewRegistry()}
	h, err := NewHandler(Options{
		Queue:         f.q,
		Namespaces:    NewAPINamespaceChecker(testKube, CacheOptions{}),
		Authenticator: newTokenReviewAuthenticator(client, "", CacheOptions{}, ReviewLimit{}, af.clock),
		Authorizer:    newSubjectAccessReviewAuthorizer(client, CacheOptions{}, af.clock),
		Registerer:    f.registry,
		Log:           testr.NewWithInterface(t, testr.Options{}),
	})
	if err != nil {
		t.Fatalf("NewHandler: %v", err)
	}
	f.handler = h
	f.server = httptest.NewServer(h)
	t.Cleanup(f.server.Close)
	af.fixture = f
	return af
}

func bearer(token string) http.Header {
	h := structuredHeader()
	h.Set("Authorization", "Bearer "+token)
	return h
}

func TestAuthentication(t *testing.T) {
	af := newAuthFixture(t)
	wrongAudience := mintToken(t, af.namespace, "publisher", "other.example")
	createServiceAccount(t, af.namespace, "ephemeral")
	// Not reviewed before the deletion: kube-apiserver caches successful
	// token authentications for 10s.
	ephemeral := mintToken(t, af.namespace, "ephemeral", heraldv1alpha1.DefaultAudience)
	if err := testKube.CoreV1().ServiceAccounts(af.namespace).Delete(testContext(t), "ephemeral", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// TokenRequest cannot mint a token that expires within a test (600s is
	// the minimum), so "expired" is covered by a token whose service account
	// was deleted — bound tokens die with their account — and by a JWT the
	// API server never signed.
	waitTokenReview(t, ephemeral, false)
	const garbageJWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJpc3MiOiJ4Iiwic3ViIjoieCIsImV4cCI6MX0.c2lnbmF0dXJl"

	tests := []struct {
		name          string
		authorization []string
		wantStatus    int
		wantText      string
		secret        string // must not appear in the answer
	}{
		{name: "missing token", wantStatus: 401, wantText: `missing bearer token: send "Authorization: Bearer <token>" with a Kubernetes service account token for audience "herald.dev"`},
		{name: "basic auth", authorization: []string{"Basic dXNlcjpwYXNz"}, wantStatus: 401, wantText: "malformed Authorization header", secret: "dXNlcjpwYXNz"},
		{name: "bearer without token", authorization: []string{"Bearer "}, wantStatus: 401, wantText: "malformed Authorization header"},
		{name: "two tokens", authorization: []string{"Bearer a", "Bearer b"}, wantStatus: 401, wantText: "malformed Authorization header"},
		{name: "garbage JWT", authorization: []string{"Bearer " + garbageJWT}, wantStatus: 401, wantText: "token", secret: garbageJWT},
		{name: "wrong audience", authorization: []string{"Bearer " + wrongAudience}, wantStatus: 401, wantText: "audience", secret: wrongAudience},
		{name: "deleted service account", authorization: []string{"Bearer " + ephemeral}, wantStatus: 401, wantText: "token", secret: ephemeral},
		{name: "no RBAC grant", authorization: []string{"Bearer " + af.bystanderToken}, wantStatus: 403,
			wantText: fmt.Sprintf(`user "system:serviceaccount:%s:bystander" may not create events.herald.dev in namespace %q`, af.namespace, af.namespace), secret: af.bystanderToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			header := structuredHeader()
			header["Authorization"] = tc.authorization
			r := post(t, af.url(af.namespace), header, eventJSON(t, nil))
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", r.status, tc.wantStatus, r.body)
			}
			t.Logf("answer: %s", r.body)
			if e := r.errorBody(t); !strings.Contains(e.Error, tc.wantText) {
				t.Errorf("error %q does not contain %q", e.Error, tc.wantText)
			}
			if tc.secret != "" && strings.Contains(string(r.body), tc.secret) {
				t.Errorf("answer echoes the credential: %s", r.body)
			}
			if tc.wantStatus == 401 {
				want := `Bearer realm="herald", error="invalid_token"`
				if tc.authorization == nil {
					want = `Bearer realm="herald"`
				}
				if got := r.header.Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate %q, want %q", got, want)
				}
			}
		})
	}
	if n := storedCount(t, af.q); n != 0 {
		t.Fatalf("rejected requests stored %d events", n)
	}

	t.Run("granted", func(t *testing.T) {
		got := post(t, af.url(af.namespace), bearer(af.publisherToken), eventJSON(t, nil)).accepted(t)
		if len(got.Events) != 1 || got.Events[0].Duplicate {
			t.Fatalf("202 body %+v", got)
		}
		msgs := fetchStored(t, af.q, 1)
		checkStoredHeaders(t, msgs[0], af.namespace, "/orders", "evt-1")
	})

	t.Run("403 message states the grant", func(t *testing.T) {
		r := post(t, af.url(af.namespace), bearer(af.bystanderToken), eventJSON(t, nil))
		e := r.errorBody(t)
		for _, want := range []string{`apiGroups ["herald.dev"]`, `resources ["events"]`, `verbs ["create"]`} {
			if !strings.Contains(e.Error, want) {
				t.Errorf("403 error %q does not contain %q", e.Error, want)
			}
		}
	})
}

// TestAuthDecisionsAreCached counts TokenReviews and SubjectAccessReviews:
// within the TTL a repeated request makes none, after it one each.
func TestAuthDecisionsAreCached(t *testing.T) {
	af := newAuthFixture(t)
	url := af.url(af.namespace)
	expect := func(step string, tokenReviews, accessReviews int) {
		t.Helper()
		if got := af.counter.get(tokenReviewPath); got != tokenReviews {
			t.Errorf("%s: %d TokenReviews, want %d", step, got, tokenReviews)
		}
		if got := af.counter.get(accessReviewPath); got != accessReviews {
			t.Errorf("%s: %d SubjectAccessReviews, want %d", step, got, accessReviews)
		}
	}

	post(t, url, bearer(af.publisherToken), eventJSON(t, map[string]any{"id": "1"})).accepted(t)
	expect("first request", 1, 1)
	post(t, url, bearer(af.publisherToken), eventJSON(t, map[string]any{"id": "2"})).accepted(t)
	expect("second request within the TTL", 1, 1)
	af.clock.Step(DefaultAllowTTL + time.Second)
	post(t, url, bearer(af.publisherToken), eventJSON(t, map[string]any{"id": "3"})).accepted(t)
	expect("request after the allow TTL", 2, 2)

	// Denials are cached too, for the shorter deny TTL.
	for range 2 {
		if r := post(t, url, bearer(af.bystanderToken), eventJSON(t, nil)); r.status != http.StatusForbidden {
			t.Fatalf("bystander: status %d, want 403", r.status)
		}
	}
	expect("two denied requests", 3, 3)
	af.clock.Step(DefaultDenyTTL + time.Second)
	if r := post(t, url, bearer(af.bystanderToken), eventJSON(t, nil)); r.status != http.StatusForbidden {
		t.Fatalf("bystander: status %d, want 403", r.status)
	}
	// The bystander's token (allow TTL 10s) is still cached; its denial
	// (deny TTL 2s) is not.
	expect("denied request after the deny TTL", 3, 4)

	wrongAudience := mintToken(t, af.namespace, "publisher", "other.example")
	for range 2 {
		if r := post(t, url, bearer(wrongAudience), eventJSON(t, nil)); r.status != http.StatusUnauthorized {
			t.Fatalf("wrong audience: status %d, want 401", r.status)
		}
	}
	expect("two wrong-audience requests", 4, 4)
	// A rejected token is remembered for the longer token deny TTL.
	af.clock.Step(DefaultDenyTTL + time.Second)
	if r := post(t, url, bearer(wrongAudience), eventJSON(t, nil)); r.status != http.StatusUnauthorized {
		t.Fatalf("wrong audience: status %d, want 401", r.status)
	}
	expect("wrong-audience request after the deny TTL", 4, 4)
	af.clock.Step(DefaultTokenDenyTTL)
	if r := post(t, url, bearer(wrongAudience), eventJSON(t, nil)); r.status != http.StatusUnauthorized {
		t.Fatalf("wrong audience: status %d, want 401", r.status)
	}
	expect("wrong-audience request after the token deny TTL", 5, 4)

	if n := storedCount(t, af.q); n != 3 {
		t.Errorf("%d events stored, want the 3 accepted", n)
	}
}

// TestNamespaceExistenceBehindAuthorization: a publisher allowed in every
// namespace learns that one does not exist (404); one allowed only in its own
// namespace gets 403 for any other, so it cannot probe which exist.
func TestNamespaceExistenceBehindAuthorization(t *testing.T) {
	af := newAuthFixture(t)
	ctx := testContext(t)
	name := af.namespace + "-cluster"
	createServiceAccount(t, af.namespace, "cluster-publisher")
	if _, err := testKube.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{publisherRule},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := testKube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "cluster-publisher", Namespace: af.namespace}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = testKube.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = testKube.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	missing := af.namespace + "-missing"
	waitAllowed(t, fmt.Sprintf("system:serviceaccount:%s:cluster-publisher", af.namespace), missing)
	clusterToken := mintToken(t, af.namespace, "cluster-publisher", heraldv1alpha1.DefaultAudience)
	waitTokenReview(t, clusterToken, true)

	r := post(t, af.url(missing), bearer(clusterToken), eventJSON(t, nil))
	if r.status != http.StatusNotFound || !strings.Contains(r.errorBody(t).Error, fmt.Sprintf("namespace %q not found", missing)) {
		t.Errorf("cluster-wide publisher, missing namespace: status %d body %s, want 404", r.status, r.body)
	}
	r = post(t, af.url(missing), bearer(af.publisherToken), eventJSON(t, nil))
	if r.status != http.StatusForbidden {
		t.Errorf("namespace-scoped publisher, missing namespace: status %d body %s, want 403", r.status, r.body)
	}
	post(t, af.url(af.namespace), bearer(clusterToken), eventJSON(t, nil)).accepted(t)
	if n := storedCount(t, af.q); n != 1 {
		t.Errorf("%d events stored, want 1", n)
	}
}

func TestAPINamespaceChecker(t *testing.T) {
	ctx := testContext(t)
	client, counter := countingClient(t)
	clock := clocktesting.NewFakeClock(time.Now())
	checker := newAPINamespaceChecker(client, CacheOptions{}, clock)
	present := createNamespace(t, "ingest-ns")
	absent := present + "-later"

	check := func(name string, want bool) {
		t.Helper()
		got, err := checker.Exists(ctx, name)
		if err != nil || got != want {
			t.Fatalf("Exists(%s) = %v, %v; want %v", name, got, err, want)
		}
	}
	gets := func(name string) int { return counter.get("GET /api/v1/namespaces/" + name) }

	check(present, true)
	check(present, true)
	if n := gets(present); n != 1 {
		t.Errorf("%d GETs of an existing namespace within the TTL, want 1", n)
	}
	check(absent, false)
	if _, err := testKube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: absent}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	check(absent, false) // still cached as absent
	clock.Step(DefaultNamespaceAbsentTTL + time.Second)
	check(absent, true)
	if n := gets(absent); n != 2 {
		t.Errorf("%d GETs of a namespace created after a miss, want 2", n)
	}

	// envtest runs no namespace controller: a deleted namespace stays
	// Terminating, and no events are accepted for it.
	if err := testKube.CoreV1().Namespaces().Delete(ctx, present, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	clock.Step(DefaultNamespacePresentTTL + time.Second)
	check(present, false)
}

func TestListerNamespaceChecker(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	present := createNamespace(t, "ingest-lister")
	factory := informers.NewSharedInformerFactory(testKube, 0)
	lister := factory.Core().V1().Namespaces().Lister()
	factory.Start(ctx.Done())
	defer func() {
		cancel() // Shutdown waits for the informers, which stop with ctx
		factory.Shutdown()
	}()
	waitCtx, waitCancel := context.WithTimeout(ctx, 10*time.Second)
	defer waitCancel()
	if !cache.WaitForCacheSync(waitCtx.Done(), factory.Core().V1().Namespaces().Informer().HasSynced) {
		t.Fatal("namespace informer did not sync within 10s")
	}
	checker := ListerNamespaceChecker{Lister: lister}
	for name, want := range map[string]bool{present: true, present + "-missing": false} {
		if got, err := checker.Exists(ctx, name); err != nil || got != want {
			t.Errorf("Exists(%s) = %v, %v; want %v", name, got, err, want)
		}
	}
}

// TestTokenReviewAuthenticatorAudience: the authenticator accepts tokens
// for exactly its configured audience.
func TestTokenReviewAuthenticatorAudience(t *testing.T) {
	ns := createNamespace(t, "ingest-aud")
	createServiceAccount(t, ns, "sa")
	token := mintToken(t, ns, "sa", "custom.example")
	waitTokenReview(t, mintToken(t, ns, "sa", heraldv1alpha1.DefaultAudience), true)

	custom := NewTokenReviewAuthenticator(testKube, "custom.example", CacheOptions{}, ReviewLimit{})
	if custom.Audience() != "custom.example" {
		t.Fatalf("Audience() = %q", custom.Audience())
	}
	user, err := custom.AuthenticateToken(testContext(t), token)
	if err != nil {
		t.Fatalf("token for the configured audience rejected: %v", err)
	}
	if want := fmt.Sprintf("system:serviceaccount:%s:sa", ns); user.Username != want {
		t.Errorf("user %q, want %q", user.Username, want)
	}
	_, err = NewTokenReviewAuthenticator(testKube, "", CacheOptions{}, ReviewLimit{}).AuthenticateToken(testContext(t), token)
	var unauthenticated *UnauthenticatedError
	if !errors.As(err, &unauthenticated) {
		t.Fatalf("token for another audience: error %v, want an UnauthenticatedError", err)
	}
	if strings.Contains(unauthenticated.Reason, token) {
		t.Errorf("reason echoes the token")
	}
	_, err = custom.AuthenticateToken(testContext(t), strings.Repeat("x", maxTokenBytes+1))
	if !errors.As(err, &unauthenticated) {
		t.Fatalf("oversized token: error %v, want an UnauthenticatedError", err)
	}
}

// TestAuthBackendUnavailable: when the API server cannot be asked, the
// answer is 503 with Retry-After, not 401.
func TestAuthBackendUnavailable(t *testing.T) {
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	defer dead.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: dead.URL})
	if err != nil {
		t.Fatal(err)
	}
	q := openQueue(t)
	h, err := NewHandler(Options{
		Queue:         q,
		Namespaces:    staticNamespaces("team-a"),
		Authenticator: NewTokenReviewAuthenticator(client, "", CacheOptions{}, ReviewLimit{}),
		Authorizer:    NewSubjectAccessReviewAuthorizer(client, CacheOptions{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	r := post(t, srv.URL+"/v1/namespaces/team-a/events", bearer("some-token"), eventJSON(t, nil))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After; body %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	if strings.Contains(string(r.body), "some-token") {
		t.Errorf("answer echoes the token: %s", r.body)
	}
	if n := storedCount(t, q); n != 0 {
		t.Errorf("%d events stored", n)
	}
}
