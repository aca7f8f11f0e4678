package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// policyTimeout bounds how long the API server may take to load the policy
// and RBAC changes: both are read through informers, asynchronously.
const policyTimeout = 60 * time.Second

// secretReference sets one of the four Secret references of an endpoint.
type secretReference struct {
	field string // as the policy names it
	set   func(spec *heraldv1.WebhookEndpointSpec, secret string)
}

var secretReferences = []secretReference{
	{"spec.headers[X-Token].valueFrom", func(spec *heraldv1.WebhookEndpointSpec, secret string) {
		spec.Headers = append(spec.Headers, heraldv1.HeaderSpec{Name: "X-Token", ValueFrom: &heraldv1.SecretKeyReference{Name: secret}})
	}},
	{"spec.signing.secretRef", func(spec *heraldv1.WebhookEndpointSpec, secret string) {
		spec.Signing = &heraldv1.SigningSpec{SecretRef: &heraldv1.SecretKeyReference{Name: secret}}
	}},
	{"spec.tls.caSecretRef", func(spec *heraldv1.WebhookEndpointSpec, secret string) {
		if spec.TLS == nil {
			spec.TLS = &heraldv1.TLSSpec{}
		}
		spec.TLS.CASecretRef = &heraldv1.SecretKeyReference{Name: secret}
	}},
	{"spec.tls.clientCertificateSecretRef", func(spec *heraldv1.WebhookEndpointSpec, secret string) {
		if spec.TLS == nil {
			spec.TLS = &heraldv1.TLSSpec{}
		}
		spec.TLS.ClientCertificateSecretRef = &heraldv1.LocalObjectReference{Name: secret}
	}},
}

// TestAdmissionPolicyRefusesUnreadableSecretReferences installs the
// ValidatingAdmissionPolicy of config/admission and acts as a tenant's
// ServiceAccount bound only to herald-editor: it may create WebhookEndpoints
// but not read Secrets, so it must not be able to have Herald use a Secret,
// through any of the four references, on create or on update. Once it may
// get the Secret, the same endpoint is accepted.
func TestAdmissionPolicyRefusesUnreadableSecretReferences(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g := NewWithT(t)
	installAdmissionPolicy(ctx, t)
	installClusterRole(ctx, t, "editor_role.yaml")

	ns := newNamespace(t)
	const serviceAccount = "gitops"
	username := fmt.Sprintf("system:serviceaccount:%s:%s", ns, serviceAccount)
	createAs(ctx, t, k8sClient, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: serviceAccount}})
	createAs(ctx, t, k8sClient, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gitops-herald-editor"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "herald-editor"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: serviceAccount}},
	})
	tenant := impersonate(t, username, "system:serviceaccounts", "system:serviceaccounts:"+ns, "system:authenticated")

	// refusal is the part of the policy's message about one reference.
	refusal := func(field, secret string) string {
		return fmt.Sprintf("%s: user %q may not get Secret %q in namespace %q", field, username, secret, ns)
	}
	expectRefused := func(g Gomega, err error, field, secret string) {
		g.Expect(err).To(HaveOccurred(), "%s referencing Secret %q accepted", field, secret)
		g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "want Forbidden, got %v", err)
		g.Expect(err.Error()).To(ContainSubstring(refusal(field, secret)))
		g.Expect(err.Error()).To(ContainSubstring("grant get on that Secret or reference one you can read"))
	}

	// The policy is in effect once it refuses what it must (it and the
	// RoleBinding above are loaded asynchronously; a dry run stores nothing).
	createSecret(ctx, t, ns, "probe")
	probe := endpoint(ns, "probe", func(ep *heraldv1.WebhookEndpoint) { secretReferences[1].set(&ep.Spec, "probe") })
	g.Eventually(func(g Gomega) {
		expectRefused(g, tenant.Create(ctx, probe.DeepCopy(), client.DryRunAll), secretReferences[1].field, "probe")
	}, policyTimeout, pollEvery).Should(Succeed())

	// A Secret the tenant may read, referenced next to one it may not.
	const readable = "readable"
	createSecret(ctx, t, ns, readable)
	grantGetSecret(ctx, t, ns, serviceAccount, readable)
	g.Eventually(func() error {
		ep := endpoint(ns, "readable-only")
		for _, ref := range secretReferences {
			ref.set(&ep.Spec, readable)
		}
		return tenant.Create(ctx, ep, client.DryRunAll)
	}, policyTimeout, pollEvery).Should(Succeed(), "references to a Secret the tenant may get are accepted")

	for i, ref := range secretReferences {
		secret := fmt.Sprintf("payroll-token-%d", i)
		name := fmt.Sprintf("ref-%d", i)
		t.Run(ref.field, func(t *testing.T) {
			g := NewWithT(t)
			createSecret(ctx, t, ns, secret)
			withReference := endpoint(ns, name, func(ep *heraldv1.WebhookEndpoint) { ref.set(&ep.Spec, secret) })

			// Create, the reference alone.
			expectRefused(g, tenant.Create(ctx, withReference.DeepCopy()), ref.field, secret)

			// Create, next to the three other references to a readable
			// Secret: only the unreadable one is named.
			mixed := endpoint(ns, name+"-mixed")
			for _, other := range secretReferences {
				if other.field != ref.field {
					other.set(&mixed.Spec, readable)
				}
			}
			ref.set(&mixed.Spec, secret)
			err := tenant.Create(ctx, mixed)
			expectRefused(g, err, ref.field, secret)
			g.Expect(err.Error()).NotTo(ContainSubstring(fmt.Sprintf("Secret %q", readable)))

			// Update of an accepted endpoint that adds the reference (a
			// merge patch: the manager writes status concurrently).
			plain := endpoint(ns, name+"-update")
			g.Expect(tenant.Create(ctx, plain)).To(Succeed(), "an endpoint without Secret references is accepted")
			addReference := client.MergeFrom(plain.DeepCopy())
			ref.set(&plain.Spec, secret)
			expectRefused(g, tenant.Patch(ctx, plain, addReference), ref.field, secret)

			// The same objects are accepted once the tenant may get the
			// Secret.
			grantGetSecret(ctx, t, ns, serviceAccount, secret)
			g.Eventually(func() error {
				return tenant.Create(ctx, withReference.DeepCopy())
			}, policyTimeout, pollEvery).Should(Succeed(), "create once the tenant may get Secret %q", secret)
			g.Expect(tenant.Create(ctx, mixed)).To(Succeed())
			g.Expect(tenant.Patch(ctx, plain, addReference)).To(Succeed())
		})
	}

	// Several headers from Secrets share one validation: its message lists
	// them all, the unreadable one among them.
	t.Run("several headers from Secrets", func(t *testing.T) {
		g := NewWithT(t)
		const secret = "payroll-token-headers"
		createSecret(ctx, t, ns, secret)
		ep := endpoint(ns, "two-headers", func(ep *heraldv1.WebhookEndpoint) {
			ep.Spec.Headers = []heraldv1.HeaderSpec{
				{Name: "X-Readable", ValueFrom: &heraldv1.SecretKeyReference{Name: readable}},
				{Name: "X-Payroll", ValueFrom: &heraldv1.SecretKeyReference{Name: secret}},
			}
		})
		err := tenant.Create(ctx, ep)
		g.Expect(err).To(HaveOccurred())
		g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "want Forbidden, got %v", err)
		g.Expect(err.Error()).To(ContainSubstring(fmt.Sprintf(
			`spec.headers[].valueFrom: user %q may not get every Secret these headers reference (X-Readable: Secret %q, X-Payroll: Secret %q) in namespace %q`,
			username, readable, secret, ns)))
	})

	// An endpoint someone else set up with a Secret the tenant may not read:
	// the tenant may still change its metadata, but not its spec, since a
	// new url would send that Secret somewhere else.
	t.Run("spec change of an existing reference", func(t *testing.T) {
		g := NewWithT(t)
		const secret = "payroll-token-admin"
		createSecret(ctx, t, ns, secret)
		ep := endpoint(ns, "set-up-by-admin", func(ep *heraldv1.WebhookEndpoint) { secretReferences[0].set(&ep.Spec, secret) })
		createAs(ctx, t, k8sClient, ep)

		label := client.MergeFrom(ep.DeepCopy())
		ep.Labels = map[string]string{"team": "payroll"}
		g.Expect(tenant.Patch(ctx, ep, label)).To(Succeed(), "a metadata-only update checks no reference")

		redirect := client.MergeFrom(ep.DeepCopy())
		ep.Spec.URL = "https://attacker.example.com/hooks"
		expectRefused(g, tenant.Patch(ctx, ep, redirect), secretReferences[0].field, secret)
	})
}

// installAdmissionPolicy creates the policy and binding of config/admission
// in the suite's API server and removes them when the test ends.
func installAdmissionPolicy(ctx context.Context, t *testing.T) {
	t.Helper()
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	readManifest(t, filepath.Join("..", "config", "admission", "secret_reference_policy.yaml"), policy)
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	readManifest(t, filepath.Join("..", "config", "admission", "secret_reference_policy_binding.yaml"), binding)
	for _, obj := range []client.Object{policy, binding} {
		createAs(ctx, t, k8sClient, obj)
		t.Cleanup(func() {
			if err := k8sClient.Delete(context.Background(), obj); err != nil {
				t.Errorf("delete %s: %v", obj.GetName(), err)
			}
		})
	}
}

// installClusterRole creates a ClusterRole of config/rbac unless it exists.
func installClusterRole(ctx context.Context, t *testing.T, file string) {
	t.Helper()
	role := &rbacv1.ClusterRole{}
	readManifest(t, filepath.Join("..", "config", "rbac", file), role)
	if err := k8sClient.Create(ctx, role); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create ClusterRole %s: %v", role.Name, err)
	}
}

func readManifest(t *testing.T, path string, into client.Object) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(strings.TrimPrefix(string(raw), "---\n")), into); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}

func createAs(ctx context.Context, t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(ctx, obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func createSecret(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	createAs(ctx, t, k8sClient, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		StringData: map[string]string{"value": "not-for-" + name},
	})
}

// grantGetSecret lets the ServiceAccount get one Secret, by name.
func grantGetSecret(ctx context.Context, t *testing.T, ns, serviceAccount, secret string) {
	t.Helper()
	name := "get-secret-" + secret
	createAs(ctx, t, k8sClient, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{secret}, Verbs: []string{"get"},
		}},
	})
	createAs(ctx, t, k8sClient, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: serviceAccount}},
	})
}

// impersonate returns a client of the suite's API server acting as the user.
func impersonate(t *testing.T, username string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(testCfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: username, Groups: groups}
	c, err := client.New(cfg, client.Options{Scheme: testScheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
