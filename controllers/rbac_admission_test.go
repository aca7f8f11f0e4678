package controllers

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// TestManagerRoleUnderOwnerReferencesPermissionEnforcement runs the
// endpoint controller as a user holding only the manager's ClusterRole
// (config/rbac/role.yaml, generated from this package's markers) against an
// API server with the OwnerReferencesPermissionEnforcement admission plugin,
// which some distributions (OpenShift among them) enable: setting
// blockOwnerDeletion on the managed Secret's owner reference then requires
// update on the owner's finalizers. The endpoint must become Ready with its
// managed Secret.
func TestManagerRoleUnderOwnerReferencesPermissionEnforcement(t *testing.T) {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	env.ControlPlane.GetAPIServer().Configure().Append("enable-admission-plugins", "OwnerReferencesPermissionEnforcement")
	adminCfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	admin, err := client.New(adminCfg, client.Options{Scheme: testScheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The endpoint controller needs only the ClusterRole; the Role in
	// herald-system serves the dispatcher controller and the watchdog.
	role := loadRBAC(t, filepath.Join("..", "config", "rbac")).clusterRole(t, "herald-manager").DeepCopy()
	const user = "herald-manager-under-test"
	if err := admin.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}); err != nil {
		t.Fatal(err)
	}
	managerUser, err := env.AddUser(envtest.User{Name: user}, nil)
	if err != nil {
		t.Fatal(err)
	}

	mgr, err := ctrl.NewManager(managerUser.Config(), ctrl.Options{
		Scheme:  testScheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// The suite's manager already runs a "webhookendpoint" controller.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := mgr.GetEventRecorder("herald-manager")
	if err := (&WebhookEndpointReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: rec}).SetupWithManager(ctx, mgr); err != nil {
		t.Fatal(err)
	}
	startManager(t, ctx, mgr)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "owner-refs"}}
	if err := admin.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "orders"},
		Spec:       heraldv1.WebhookEndpointSpec{URL: "https://receiver.example.com/hooks"},
	}
	if err := admin.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := &heraldv1.WebhookEndpoint{}
		if err := admin.Get(ctx, client.ObjectKeyFromObject(ep), got); err != nil {
			t.Fatal(err)
		}
		secret := &corev1.Secret{}
		secretErr := admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: ManagedSecretName(ep.Name)}, secret)
		if meta.IsStatusConditionTrue(got.Status.Conditions, heraldv1.ReadyCondition) && secretErr == nil {
			return
		}
		if time.Now().After(deadline) {
			// Say why: apply the managed Secret as the manager would.
			restricted, err := client.New(managerUser.Config(), client.Options{Scheme: testScheme})
			if err != nil {
				t.Fatal(err)
			}
			s, _, buildErr := buildManagedSecret(got, ManagedSecretName(ep.Name), nil, &endpointSources{}, "")
			if buildErr != nil {
				t.Fatal(buildErr)
			}
			t.Fatalf("endpoint not Ready with its managed Secret within 20s (conditions %+v); applying the Secret as the manager: %v",
				got.Status.Conditions, applyObject(ctx, restricted, s))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
