package controllers

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

// installNamespace is the namespace config/default installs Herald into
// (and the namespace=herald-system RBAC markers name).
const installNamespace = "herald-system"

// renderedRBAC is the RBAC of config/rbac, as kustomize renders it into
// config/default: every Role and binding lands in installNamespace.
type renderedRBAC struct {
	clusterRoles        []*rbacv1.ClusterRole
	roles               []*rbacv1.Role
	clusterRoleBindings []*rbacv1.ClusterRoleBinding
	roleBindings        []*rbacv1.RoleBinding
}

// loadRBAC reads the resources of a kustomization directory, following
// directories it lists, and keeps the RBAC objects. Herald's config/rbac
// uses no kustomize transformers, so its resources are what gets applied,
// apart from the namespace config/default sets.
func loadRBAC(t *testing.T, dir string) *renderedRBAC {
	t.Helper()
	out := &renderedRBAC{}
	var load func(dir string)
	load = func(dir string) {
		raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct {
			Resources []string `json:"resources"`
		}
		if err := yaml.Unmarshal(raw, &k); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for _, res := range k.Resources {
			path := filepath.Join(dir, res)
			if st, err := os.Stat(path); err == nil && st.IsDir() {
				load(path)
				continue
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for doc := range bytes.SplitSeq(raw, []byte("\n---")) {
				out.add(t, path, doc)
			}
		}
	}
	load(dir)
	return out
}

func (r *renderedRBAC) add(t *testing.T, path string, doc []byte) {
	t.Helper()
	var meta metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	decode := func(obj client.Object, namespaced bool) {
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: %s: %v", path, meta.Kind, err)
		}
		if namespaced && obj.GetNamespace() == "" {
			obj.SetNamespace(installNamespace) // config/default's namespace
		}
	}
	switch meta.Kind {
	case "ClusterRole":
		obj := &rbacv1.ClusterRole{}
		decode(obj, false)
		r.clusterRoles = append(r.clusterRoles, obj)
	case "ClusterRoleBinding":
		obj := &rbacv1.ClusterRoleBinding{}
		decode(obj, false)
		r.clusterRoleBindings = append(r.clusterRoleBindings, obj)
	case "Role":
		obj := &rbacv1.Role{}
		decode(obj, true)
		r.roles = append(r.roles, obj)
	case "RoleBinding":
		obj := &rbacv1.RoleBinding{}
		decode(obj, true)
		r.roleBindings = append(r.roleBindings, obj)
	}
}

func (r *renderedRBAC) clusterRole(t *testing.T, name string) *rbacv1.ClusterRole {
	t.Helper()
	for _, role := range r.clusterRoles {
		if role.Name == name {
			return role
		}
	}
	t.Fatalf("config/rbac has no ClusterRole %s", name)
	return nil
}

func (r *renderedRBAC) role(t *testing.T, namespace, name string) *rbacv1.Role {
	t.Helper()
	for _, role := range r.roles {
		if role.Namespace == namespace && role.Name == name {
			return role
		}
	}
	t.Fatalf("config/rbac has no Role %s/%s", namespace, name)
	return nil
}

// grantedVerbs returns the verbs rules grant on group/resource, sorted.
func grantedVerbs(rules []rbacv1.PolicyRule, group, resource string) []string {
	var out []string
	for _, rule := range rules {
		if slices.Contains(rule.APIGroups, group) && slices.Contains(rule.Resources, resource) {
			out = append(out, rule.Verbs...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// workloadResources are the resources whose create, update or patch lets an
// identity run code (as any ServiceAccount of the namespace) or grant
// permissions: no Herald identity may hold those verbs on them cluster-wide.
var workloadResources = map[string][]string{
	"apps":                      {"deployments", "daemonsets", "statefulsets", "replicasets"},
	"batch":                     {"jobs", "cronjobs"},
	"":                          {"pods", "pods/exec", "pods/attach", "services", "serviceaccounts", "serviceaccounts/token", "persistentvolumeclaims", "replicationcontrollers"},
	"rbac.authorization.k8s.io": {"clusterroles", "clusterrolebindings", "roles", "rolebindings"},
}

// workloadWrites lists the workload-creating permissions rules grant, as
// "verb group/resource" strings. Wildcards count.
func workloadWrites(rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, rule := range rules {
		for group, resources := range workloadResources {
			if !slices.Contains(rule.APIGroups, group) && !slices.Contains(rule.APIGroups, "*") {
				continue
			}
			for _, resource := range resources {
				if !slices.Contains(rule.Resources, resource) && !slices.Contains(rule.Resources, "*") {
					continue
				}
				for _, verb := range []string{"create", "update", "patch", "*"} {
					if slices.Contains(rule.Verbs, verb) {
						out = append(out, verb+" "+group+"/"+resource)
					}
				}
			}
		}
		for _, verb := range []string{"escalate", "bind", "impersonate"} {
			if slices.Contains(rule.Verbs, verb) {
				out = append(out, verb+" "+strings.Join(rule.Resources, ","))
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestRenderedRBACGrantsNoWorkloadWritesClusterWide reads what Herald
// installs (config/rbac) and what the manager applies (DispatcherObjects,
// in both queue modes) and checks that no Herald identity can create,
// update or patch workloads, Services, ServiceAccounts, PVCs or RBAC
// cluster-wide: only Roles in the install namespace may, and even there no
// Role may write RBAC. A stolen manager token then runs code only as the
// ServiceAccounts of herald-system, not as any ServiceAccount of the
// cluster.
func TestRenderedRBACGrantsNoWorkloadWritesClusterWide(t *testing.T) {
	rbac := loadRBAC(t, filepath.Join("..", "config", "rbac"))
	if len(rbac.clusterRoles) == 0 || len(rbac.roles) == 0 {
		t.Fatalf("rendered %d ClusterRoles and %d Roles, want both", len(rbac.clusterRoles), len(rbac.roles))
	}

	// The manager renders no RBAC object itself.
	for _, cfg := range []DispatcherConfig{embeddedConfig(), externalConfig()} {
		for _, obj := range DispatcherObjects(cfg) {
			if obj.GetObjectKind().GroupVersionKind().Group == rbacv1.GroupName {
				t.Errorf("the manager applies %s %s: RBAC must ship in config/rbac",
					obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName())
			}
			if obj.GetNamespace() != cfg.Namespace {
				t.Errorf("the manager applies %T %s outside the dispatcher's namespace", obj, obj.GetName())
			}
		}
	}

	// A ClusterRole grants cluster-wide whenever a ClusterRoleBinding binds
	// it, and anyone who may bind can do so: none may hold these verbs.
	for _, role := range rbac.clusterRoles {
		if writes := workloadWrites(role.Rules); len(writes) > 0 {
			t.Errorf("ClusterRole %s grants %v", role.Name, writes)
		}
		if role.AggregationRule != nil {
			t.Errorf("ClusterRole %s aggregates other roles", role.Name)
		}
	}
	for _, role := range rbac.roles {
		writes := workloadWrites(role.Rules)
		if len(writes) > 0 && role.Namespace != installNamespace {
			t.Errorf("Role %s/%s outside %s grants %v", role.Namespace, role.Name, installNamespace, writes)
		}
		for _, w := range writes {
			if strings.Contains(w, rbacv1.GroupName) || strings.HasPrefix(w, "escalate") ||
				strings.HasPrefix(w, "bind") || strings.HasPrefix(w, "impersonate") {
				t.Errorf("Role %s/%s grants %s", role.Namespace, role.Name, w)
			}
		}
	}
	for _, binding := range rbac.roleBindings {
		// Every extension API server (the delivery API) reads the front
		// proxy's CA in kube-system through this built-in, read-only Role.
		if binding.Namespace == metav1.NamespaceSystem && binding.RoleRef.Kind == "Role" &&
			binding.RoleRef.Name == "extension-apiserver-authentication-reader" {
			continue
		}
		if binding.Namespace != installNamespace {
			t.Errorf("RoleBinding %s/%s outside %s", binding.Namespace, binding.Name, installNamespace)
		}
	}

	// The manager's workload writes are in herald-system, and patch only
	// on the dispatcher's own objects.
	managerRole := rbac.role(t, installNamespace, "herald-manager")
	for _, rule := range managerRole.Rules {
		if slices.Contains(rule.Verbs, "patch") && !slices.Equal(rule.ResourceNames, []string{heraldv1alpha1.DispatcherName}) {
			t.Errorf("manager Role rule %+v patches objects other than %s", rule, heraldv1alpha1.DispatcherName)
		}
		if slices.Contains(rule.Verbs, "update") || slices.Contains(rule.Verbs, "delete") {
			t.Errorf("manager Role rule %+v: every write is a server-side apply (create, patch)", rule)
		}
	}
}

// TestManagerClusterRole checks the manager's cluster-wide rules verb by
// verb: what it needs for endpoints in every namespace, and nothing it
// only held to grant it to the dispatcher.
func TestManagerClusterRole(t *testing.T) {
	rbac := loadRBAC(t, filepath.Join("..", "config", "rbac"))
	role := rbac.clusterRole(t, "herald-manager")
	for _, tc := range []struct {
		group, resource string
		want            []string
	}{
		{"herald.dev", "webhookendpoints", []string{"get", "list", "watch"}},
		{"herald.dev", "subscriptions", []string{"get", "list", "watch"}},
		{"herald.dev", "webhookendpoints/status", []string{"patch"}},
		{"herald.dev", "subscriptions/status", []string{"patch"}},
		{"herald.dev", "webhookendpoints/finalizers", []string{"update"}},
		// Managed Secrets in every namespace with an endpoint; no update,
		// no delete.
		{"", "secrets", []string{"create", "get", "list", "patch", "watch"}},
		{"events.k8s.io", "events", []string{"create", "patch"}},
		// Held only to grant them to the dispatcher, until the dispatcher's
		// RBAC moved to config/rbac.
		{"", "namespaces", nil},
		{"authentication.k8s.io", "tokenreviews", nil},
		{"authorization.k8s.io", "subjectaccessreviews", nil},
		{"coordination.k8s.io", "leases", nil},
		{"apps", "deployments", nil},
		{"", "services", nil},
		{"rbac.authorization.k8s.io", "clusterroles", nil},
	} {
		if got := grantedVerbs(role.Rules, tc.group, tc.resource); !slices.Equal(got, tc.want) {
			t.Errorf("ClusterRole herald-manager: %s %q: want verbs %v, got %v", tc.resource, tc.group, tc.want, got)
		}
	}

	ns := rbac.role(t, installNamespace, "herald-manager")
	for _, tc := range []struct {
		group, resource string
		want            []string
	}{
		{"apps", "deployments", []string{"create", "get", "list", "patch", "watch"}},
		{"", "services", []string{"create", "get", "list", "patch", "watch"}},
		{"", "serviceaccounts", []string{"create", "get", "list", "patch", "watch"}},
		{"", "persistentvolumeclaims", []string{"create", "get", "list", "patch", "watch"}},
		{"coordination.k8s.io", "leases", []string{"get", "list", "watch"}},
	} {
		if got := grantedVerbs(ns.Rules, tc.group, tc.resource); !slices.Equal(got, tc.want) {
			t.Errorf("Role herald-system/herald-manager: %s %q: want verbs %v, got %v", tc.resource, tc.group, tc.want, got)
		}
	}
}

// TestDispatcherRBAC checks the dispatcher's roles (config/rbac/dispatcher,
// generated from dispatcher/rbac/rbac.go) verb by verb, and their bindings
// to the ServiceAccount the manager creates.
func TestDispatcherRBAC(t *testing.T) {
	rbac := loadRBAC(t, filepath.Join("..", "config", "rbac"))
	cluster := rbac.clusterRole(t, heraldv1alpha1.DispatcherName)
	ns := rbac.role(t, installNamespace, heraldv1alpha1.DispatcherName)

	for _, tc := range []struct {
		group, resource string
		want            []string
	}{
		// Read-only: never create, update or delete Secrets.
		{"", "secrets", []string{"get", "list", "watch"}},
		{"", "namespaces", []string{"get"}},
		{"herald.dev", "webhookendpoints", []string{"get", "list", "watch"}},
		{"herald.dev", "subscriptions", []string{"get", "list", "watch"}},
		{"herald.dev", "webhookendpoints/status", []string{"patch"}},
		{"herald.dev", "subscriptions/status", []string{"patch"}},
		{"authentication.k8s.io", "tokenreviews", []string{"create"}},
		{"authorization.k8s.io", "subjectaccessreviews", []string{"create"}},
		// Redeliveries: read, and their status.
		{"herald.dev", "redeliveries", []string{"get", "list", "watch"}},
		{"herald.dev", "redeliveries/status", []string{"patch"}},
		// Events only for a ping's outcome, through events.k8s.io; no core
		// Events (it reports delivery health through status), no Leases
		// outside its namespace, nothing else.
		{"", "events", nil},
		{"events.k8s.io", "events", []string{"create", "patch"}},
		{"coordination.k8s.io", "leases", nil},
		{"", "configmaps", nil},
		{"", "pods", nil},
	} {
		if got := grantedVerbs(cluster.Rules, tc.group, tc.resource); !slices.Equal(got, tc.want) {
			t.Errorf("ClusterRole %s: %s %q: want verbs %v, got %v", cluster.Name, tc.resource, tc.group, tc.want, got)
		}
	}
	// In its namespace, only the status writer's Lease: create (which
	// cannot be limited to a name), get and update of that name only.
	wantNS := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			ResourceNames: []string{heraldv1alpha1.StatusWriterLeaseName}, Verbs: []string{"get", "update"}},
	}
	if fmt.Sprint(ns.Rules) != fmt.Sprint(wantNS) {
		t.Errorf("Role %s/%s rules:\n got %+v\nwant %+v", ns.Namespace, ns.Name, ns.Rules, wantNS)
	}
	for _, rule := range append(slices.Clone(cluster.Rules), ns.Rules...) {
		if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") {
			t.Errorf("rule %+v uses a wildcard", rule)
		}
		if len(rule.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", rule)
		}
	}

	sa := DispatcherServiceAccount(DefaultDispatcherConfig())
	wantSubject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: sa.Namespace}
	var boundCluster, boundNS bool
	for _, b := range rbac.clusterRoleBindings {
		if b.RoleRef.Kind == "ClusterRole" && b.RoleRef.Name == cluster.Name {
			boundCluster = slices.Equal(b.Subjects, []rbacv1.Subject{wantSubject})
		}
	}
	for _, b := range rbac.roleBindings {
		if b.Namespace == ns.Namespace && b.RoleRef.Kind == "Role" && b.RoleRef.Name == ns.Name {
			boundNS = slices.Equal(b.Subjects, []rbacv1.Subject{wantSubject})
		}
	}
	if !boundCluster || !boundNS {
		t.Errorf("ClusterRole bound to %v: %v; Role bound to it: %v", wantSubject, boundCluster, boundNS)
	}
}

// TestManagerRolesSufficeForDispatcher runs the dispatcher controller as a
// user holding only the manager's generated roles (config/rbac/role.yaml:
// the ClusterRole, and the Role moved to a namespace of the test's own as
// kustomize would move it), with the cache options cmd/manager uses. Its
// informers must sync on namespaced list and watch, it must create every
// dispatcher object, and it must repair a deleted one.
func TestManagerRolesSufficeForDispatcher(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := newNamespace(t)
	rbac := loadRBAC(t, filepath.Join("..", "config", "rbac"))
	user := "herald-manager-roles-" + ns

	clusterRole := rbac.clusterRole(t, "herald-manager").DeepCopy()
	clusterRole.Name = user
	role := rbac.role(t, installNamespace, "herald-manager").DeepCopy()
	role.Namespace = ns
	for _, obj := range []client.Object{
		clusterRole,
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		},
		role,
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		},
	} {
		if err := k8sClient.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = k8sClient.Delete(context.Background(), clusterRole)
		_ = k8sClient.Delete(context.Background(), &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user}})
	})
	managerUser, err := testEnv.AddUser(envtest.User{Name: user}, nil)
	if err != nil {
		t.Fatal(err)
	}

	cfg := DefaultDispatcherConfig()
	cfg.Namespace = ns
	mgr, err := ctrl.NewManager(managerUser.Config(), ctrl.Options{
		Scheme:     testScheme,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Cache:      cache.Options{ByObject: DispatcherCacheOptions(cfg)},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}, // the suite runs "dispatcher" too
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&DispatcherReconciler{Client: mgr.GetClient(), Config: cfg}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	startManager(t, ctx, mgr)

	eventually := func(what string, check func() error) {
		t.Helper()
		for {
			err := check()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	eventually("every dispatcher object is created", func() error {
		for _, want := range DispatcherObjects(cfg) {
			got := want.DeepCopyObject().(client.Object)
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(want), got); err != nil {
				return err
			}
		}
		return nil
	})
	svc := &corev1.Service{}
	key := client.ObjectKey{Namespace: ns, Name: heraldv1alpha1.DispatcherName}
	if err := k8sClient.Get(ctx, key, svc); err != nil {
		t.Fatal(err)
	}
	oldUID := svc.UID
	if err := k8sClient.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	eventually("the deleted Service is recreated", func() error {
		cur := &corev1.Service{}
		if err := k8sClient.Get(ctx, key, cur); err != nil {
			return err
		}
		if cur.UID == oldUID {
			return fmt.Errorf("still the old Service")
		}
		return nil
	})
}
