/*
Copyright 2026 The Herald Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package controllers

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/diff"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	psaapi "k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

func embeddedConfig() DispatcherConfig {
	return DefaultDispatcherConfig()
}

func externalConfig() DispatcherConfig {
	cfg := DefaultDispatcherConfig()
	cfg.NATSURL = "nats://nats.nats.svc:4222"
	cfg.Replicas = 3
	return cfg
}

func dispatcherContainer(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	containers := d.Spec.Template.Spec.Containers
	if len(containers) != 1 {
		t.Fatalf("want 1 container, got %d", len(containers))
	}
	return containers[0]
}

func TestDispatcherPodSecurityRestricted(t *testing.T) {
	evaluator, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
	if err != nil {
		t.Fatalf("pod security evaluator: %v", err)
	}
	restricted := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}

	for _, tc := range []struct {
		name string
		cfg  DispatcherConfig
	}{
		{"embedded", embeddedConfig()},
		{"external", externalConfig()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := DispatcherDeployment(tc.cfg)
			pod := d.Spec.Template

			// The Pod Security admission checks themselves: a namespace
			// enforcing "restricted" admits the pod.
			result := psapolicy.AggregateCheckResults(evaluator.EvaluatePod(restricted, &pod.ObjectMeta, &pod.Spec))
			if !result.Allowed {
				t.Fatalf("pod violates the restricted profile: %s: %s", result.ForbiddenReason(), result.ForbiddenDetail())
			}

			psc := pod.Spec.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
				t.Errorf("pod runAsNonRoot: want true, got %+v", psc)
			}
			if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("pod seccompProfile: want RuntimeDefault, got %+v", psc)
			}

			sc := dispatcherContainer(t, d).SecurityContext
			if sc == nil {
				t.Fatal("container securityContext missing")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("allowPrivilegeEscalation: want false, got %v", sc.AllowPrivilegeEscalation)
			}
			caps := sc.Capabilities
			if caps == nil || !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) || len(caps.Add) != 0 {
				t.Errorf("capabilities: want drop [ALL] and no add, got %+v", sc.Capabilities)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("readOnlyRootFilesystem: want true, got %v", sc.ReadOnlyRootFilesystem)
			}
			if sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
				t.Errorf("runAsUser: want 65532, got %v", sc.RunAsUser)
			}

			// A read-only root filesystem needs a writable /tmp.
			if !hasMount(dispatcherContainer(t, d), tmpVolumeName, "/tmp") || !hasEmptyDir(d, tmpVolumeName) {
				t.Errorf("want an emptyDir mounted at /tmp")
			}
		})
	}
}

func hasMount(c corev1.Container, volume, mountPath string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == volume && m.MountPath == mountPath
	})
}

func hasEmptyDir(d *appsv1.Deployment, volume string) bool {
	return slices.ContainsFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.Name == volume && v.EmptyDir != nil
	})
}

func TestDispatcherQueueModes(t *testing.T) {
	for _, tc := range []struct {
		name          string
		cfg           func() DispatcherConfig
		wantPVC       bool
		wantStrategy  appsv1.DeploymentStrategyType
		wantReplicas  int32
		wantArg       string
		forbiddenArgs []string
	}{
		{
			name: "embedded forces one replica even when three are requested",
			cfg: func() DispatcherConfig {
				cfg := embeddedConfig()
				cfg.Replicas = 3
				return cfg
			},
			wantPVC:       true,
			wantStrategy:  appsv1.RecreateDeploymentStrategyType,
			wantReplicas:  1,
			wantArg:       "--store-dir=/var/lib/herald/jetstream",
			forbiddenArgs: []string{"--nats-url"},
		},
		{
			name:          "external honours replicas",
			cfg:           externalConfig,
			wantPVC:       false,
			wantStrategy:  appsv1.RollingUpdateDeploymentStrategyType,
			wantReplicas:  3,
			wantArg:       "--nats-url=nats://nats.nats.svc:4222",
			forbiddenArgs: []string{"--store-dir"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg()
			if err := cfg.Validate(); err != nil {
				t.Fatalf("config invalid: %v", err)
			}

			var pvcs []*corev1.PersistentVolumeClaim
			var deployment *appsv1.Deployment
			for _, obj := range DispatcherObjects(cfg) {
				switch o := obj.(type) {
				case *corev1.PersistentVolumeClaim:
					pvcs = append(pvcs, o)
				case *appsv1.Deployment:
					deployment = o
				}
			}
			if deployment == nil {
				t.Fatal("DispatcherObjects returned no Deployment")
			}

			if got := len(pvcs) == 1; got != tc.wantPVC {
				t.Errorf("PVC present: want %v, got %d PVCs", tc.wantPVC, len(pvcs))
			}
			if tc.wantPVC {
				pvc := pvcs[0]
				if !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
					t.Errorf("PVC access modes: want [ReadWriteOnce], got %v", pvc.Spec.AccessModes)
				}
				if got := pvc.Spec.Resources.Requests.Storage().String(); got != "10Gi" {
					t.Errorf("PVC size: want 10Gi, got %s", got)
				}
				if pvc.Spec.StorageClassName != nil {
					t.Errorf("PVC storageClassName: want unset (cluster default), got %q", *pvc.Spec.StorageClassName)
				}
			}

			if got := deployment.Spec.Strategy.Type; got != tc.wantStrategy {
				t.Errorf("strategy: want %s, got %s", tc.wantStrategy, got)
			}
			if tc.wantStrategy == appsv1.RecreateDeploymentStrategyType && deployment.Spec.Strategy.RollingUpdate != nil {
				t.Errorf("Recreate strategy must not carry rollingUpdate parameters (the API server rejects it)")
			}
			if got := *deployment.Spec.Replicas; got != tc.wantReplicas {
				t.Errorf("replicas: want %d, got %d", tc.wantReplicas, got)
			}

			container := dispatcherContainer(t, deployment)
			if !slices.Contains(container.Args, tc.wantArg) {
				t.Errorf("args %q lack %q", container.Args, tc.wantArg)
			}
			for _, forbidden := range tc.forbiddenArgs {
				if slices.ContainsFunc(container.Args, func(a string) bool { return strings.HasPrefix(a, forbidden) }) {
					t.Errorf("args %q must not contain %s", container.Args, forbidden)
				}
			}

			storeMounted := hasMount(container, storeVolumeName, cfg.StorePath)
			storeVolume := slices.ContainsFunc(deployment.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
				return v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == heraldv1alpha1.DispatcherName
			})
			if storeMounted != tc.wantPVC || storeVolume != tc.wantPVC {
				t.Errorf("store volume: want mounted=%v, got mounted=%v volume=%v", tc.wantPVC, storeMounted, storeVolume)
			}
		})
	}
}

func TestDispatcherDeploymentContainer(t *testing.T) {
	cfg := DefaultDispatcherConfig()
	cfg.AllowedCIDRs = []string{"10.0.0.0/8", "fd00::/8"}
	cfg.Audience = "events.example.com"
	d := DispatcherDeployment(cfg)
	c := dispatcherContainer(t, d)
	pod := d.Spec.Template.Spec

	if !slices.Equal(c.Command, []string{"/dispatcher"}) {
		t.Errorf("command: want [/dispatcher], got %q", c.Command)
	}
	for _, want := range []string{
		"--ingest-addr=:8080",
		"--metrics-addr=:8443",
		"--health-addr=:8081",
		"--allowed-cidrs=10.0.0.0/8,fd00::/8",
		"--audience=events.example.com",
		"--store-dir=/var/lib/herald/jetstream",
		// 90% of the default 512Mi container limit, for the Go runtime.
		"--memory-limit=483183819",
	} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %q lack %q", c.Args, want)
		}
	}
	unlimited := cfg
	unlimited.MemoryLimit = ""
	for _, arg := range dispatcherContainer(t, DispatcherDeployment(unlimited)).Args {
		if strings.HasPrefix(arg, "--memory-limit") {
			t.Errorf("without a container memory limit the args must not set %s", arg)
		}
	}

	for name, fieldPath := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
		if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.FieldRef == nil ||
			c.Env[i].ValueFrom.FieldRef.FieldPath != fieldPath {
			t.Errorf("env %s: want downward API %s", name, fieldPath)
		}
	}

	for _, probe := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
	} {
		if probe.probe == nil || probe.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET", probe.name)
			continue
		}
		port := probe.probe.HTTPGet.Port.StrVal
		i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == port })
		if probe.probe.HTTPGet.Path != probe.path || i < 0 || c.Ports[i].ContainerPort != 8081 {
			t.Errorf("%s probe: want %s on port 8081, got %s on %q", probe.name, probe.path, probe.probe.HTTPGet.Path, port)
		}
	}

	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken: want true")
	}
	if pod.ServiceAccountName != heraldv1alpha1.DispatcherName {
		t.Errorf("serviceAccountName: want %s, got %s", heraldv1alpha1.DispatcherName, pod.ServiceAccountName)
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds != 60 {
		t.Errorf("terminationGracePeriodSeconds: want 60, got %v", pod.TerminationGracePeriodSeconds)
	}
	if got := d.Spec.Template.Annotations[ConfigHashAnnotation]; got != cfg.Hash() {
		t.Errorf("%s: want %q, got %q", ConfigHashAnnotation, cfg.Hash(), got)
	}
	if c.Resources.Requests.Cpu().String() != "100m" || c.Resources.Limits.Memory().String() != "512Mi" {
		t.Errorf("resources: want the defaults, got %+v", c.Resources)
	}
	// Every Service port must select a container port by name.
	for _, sp := range DispatcherService(cfg).Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
			return p.Name == sp.TargetPort.StrVal && p.ContainerPort == sp.Port
		}) {
			t.Errorf("service port %s targets %q, which is no container port", sp.Name, sp.TargetPort.String())
		}
	}
	if !mapContains(d.Spec.Template.Labels, d.Spec.Selector.MatchLabels) {
		t.Errorf("pod labels %v do not match the selector %v", d.Spec.Template.Labels, d.Spec.Selector.MatchLabels)
	}
}

func TestDispatcherService(t *testing.T) {
	svc := DispatcherService(DefaultDispatcherConfig())
	want := map[string]int32{"http": 8080, "https-metrics": 8443}
	if len(svc.Spec.Ports) != len(want) {
		t.Fatalf("ports: want %v, got %+v", want, svc.Spec.Ports)
	}
	for _, p := range svc.Spec.Ports {
		if want[p.Name] != p.Port || p.Protocol != corev1.ProtocolTCP {
			t.Errorf("port %s: want %d/TCP, got %d/%s", p.Name, want[p.Name], p.Port, p.Protocol)
		}
	}
	if !mapContains(DispatcherDeployment(DefaultDispatcherConfig()).Spec.Template.Labels, svc.Spec.Selector) {
		t.Errorf("service selector %v does not select the dispatcher pods", svc.Spec.Selector)
	}
}

func mapContains(m, subset map[string]string) bool {
	for k, v := range subset {
		if m[k] != v {
			return false
		}
	}
	return len(subset) > 0
}

func TestDispatcherConfigHash(t *testing.T) {
	base := DefaultDispatcherConfig()
	if base.Hash() != DefaultDispatcherConfig().Hash() {
		t.Fatal("the same configuration must give the same hash")
	}
	annotation := func(cfg DispatcherConfig) string {
		return DispatcherDeployment(cfg).Spec.Template.Annotations[ConfigHashAnnotation]
	}
	if annotation(base) == "" {
		t.Fatalf("pod template lacks %s", ConfigHashAnnotation)
	}

	for _, tc := range []struct {
		name       string
		mutate     func(*DispatcherConfig)
		wantChange bool
	}{
		{"image", func(c *DispatcherConfig) { c.Image = "ghcr.io/herald-dev/herald:v0.2.0" }, true},
		{"allowed CIDRs", func(c *DispatcherConfig) { c.AllowedCIDRs = []string{"10.0.0.0/8"} }, true},
		{"audience", func(c *DispatcherConfig) { c.Audience = "other" }, true},
		{"nats url", func(c *DispatcherConfig) { c.NATSURL = "nats://nats:4222" }, true},
		{"log level", func(c *DispatcherConfig) { c.LogLevel = "debug" }, true},
		{"memory limit", func(c *DispatcherConfig) { c.MemoryLimit = "1Gi" }, true},
		{"storage size", func(c *DispatcherConfig) { c.StorageSize = "20Gi" }, true},
		// Scaling must not restart the pods.
		{"replicas", func(c *DispatcherConfig) { c.Replicas = 5 }, false},
		{"empty instead of nil CIDRs", func(c *DispatcherConfig) { c.AllowedCIDRs = []string{} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultDispatcherConfig()
			tc.mutate(&cfg)
			if changed := annotation(cfg) != annotation(base); changed != tc.wantChange {
				t.Errorf("hash changed: want %v, got %v (%s vs %s)", tc.wantChange, changed, annotation(cfg), annotation(base))
			}
		})
	}
}

func TestDispatcherConfigValidate(t *testing.T) {
	const cidrFlag = "--dispatcher-allowed-cidrs"
	for _, tc := range []struct {
		name     string
		mutate   func(*DispatcherConfig)
		wantFlag string // empty: valid
	}{
		{"defaults", func(*DispatcherConfig) {}, ""},
		{"external NATS cluster", func(c *DispatcherConfig) { c.NATSURL, c.Replicas = "nats://a:4222, tls://b:4222", 3 }, ""},
		{"allowed CIDRs", func(c *DispatcherConfig) { c.AllowedCIDRs = []string{"127.0.0.0/8", "::1/128"} }, ""},
		{"no resources", func(c *DispatcherConfig) {
			c.CPURequest, c.CPULimit, c.MemoryRequest, c.MemoryLimit = "", "", "", ""
		}, ""},
		{"bad CIDR", func(c *DispatcherConfig) { c.AllowedCIDRs = []string{"10.0.0.0/8", "10.0.0.0/33"} }, cidrFlag},
		{"address without prefix length", func(c *DispatcherConfig) { c.AllowedCIDRs = []string{"10.1.2.3"} }, cidrFlag},
		{"bad storage size", func(c *DispatcherConfig) { c.StorageSize = "ten gigs" }, "--dispatcher-storage-size"},
		{"zero storage size", func(c *DispatcherConfig) { c.StorageSize = "0" }, "--dispatcher-storage-size"},
		{"bad cpu request", func(c *DispatcherConfig) { c.CPURequest = "lots" }, "--dispatcher-cpu-request"},
		{"bad memory limit", func(c *DispatcherConfig) { c.MemoryLimit = "1GB!" }, "--dispatcher-memory-limit"},
		{"request above limit", func(c *DispatcherConfig) { c.MemoryRequest = "1Gi" }, "--dispatcher-memory-request"},
		{"empty image", func(c *DispatcherConfig) { c.Image = "" }, "--dispatcher-image"},
		{"empty namespace", func(c *DispatcherConfig) { c.Namespace = "" }, "--dispatcher-namespace"},
		{"bad namespace", func(c *DispatcherConfig) { c.Namespace = "Herald_System" }, "--dispatcher-namespace"},
		{"zero replicas", func(c *DispatcherConfig) { c.Replicas = 0 }, "--dispatcher-replicas"},
		{"http NATS URL", func(c *DispatcherConfig) { c.NATSURL = "http://nats:4222" }, "--dispatcher-nats-url"},
		{"NATS URL without host", func(c *DispatcherConfig) { c.NATSURL = "nats://" }, "--dispatcher-nats-url"},
		{"bad storage class", func(c *DispatcherConfig) { c.StorageClass = "Fast SSD" }, "--dispatcher-storage-class"},
		{"empty audience", func(c *DispatcherConfig) { c.Audience = "" }, "--dispatcher-audience"},
		{"bad log level", func(c *DispatcherConfig) { c.LogLevel = "verbose" }, "--dispatcher-log-level"},
		{"privileged port", func(c *DispatcherConfig) { c.IngestPort = 80 }, "--dispatcher-ingest-port"},
		{"port collision", func(c *DispatcherConfig) { c.HealthPort = 8080 }, "--dispatcher-health-port"},
		{"relative store path", func(c *DispatcherConfig) { c.StorePath = "data" }, "--dispatcher-store-path"},
		{"store path under /tmp", func(c *DispatcherConfig) { c.StorePath = "/tmp/js" }, "--dispatcher-store-path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultDispatcherConfig()
			tc.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case tc.wantFlag == "" && err != nil:
				t.Errorf("want valid, got %v", err)
			case tc.wantFlag != "" && err == nil:
				t.Errorf("want an error naming %s, got none", tc.wantFlag)
			case tc.wantFlag != "" && !strings.Contains(err.Error(), tc.wantFlag):
				t.Errorf("want an error naming %s, got %v", tc.wantFlag, err)
			}
		})
	}
}

func TestDispatcherBindFlags(t *testing.T) {
	var defaults DispatcherConfig
	fs := flag.NewFlagSet("defaults", flag.ContinueOnError)
	defaults.BindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if defaults.Hash() != DefaultDispatcherConfig().Hash() || defaults.Replicas != DefaultDispatcherReplicas {
		t.Errorf("flag defaults differ from DefaultDispatcherConfig: %+v", defaults)
	}
	if err := defaults.Validate(); err != nil {
		t.Errorf("flag defaults are invalid: %v", err)
	}

	var cfg DispatcherConfig
	fs = flag.NewFlagSet("set", flag.ContinueOnError)
	cfg.BindFlags(fs)
	err := fs.Parse([]string{
		"--dispatcher-namespace=herald",
		"--dispatcher-nats-url=nats://nats:4222",
		"--dispatcher-replicas=3",
		"--dispatcher-allowed-cidrs= 10.0.0.0/8 ,fd00::/8,",
		"--dispatcher-storage-class=fast",
		"--dispatcher-audience=events",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Namespace != "herald" || cfg.NATSURL != "nats://nats:4222" || cfg.Replicas != 3 ||
		cfg.StorageClass != "fast" || cfg.Audience != "events" ||
		!slices.Equal(cfg.AllowedCIDRs, []string{"10.0.0.0/8", "fd00::/8"}) {
		t.Errorf("flags not bound: %+v", cfg)
	}
	if cfg.Image != DefaultDispatcherImage || cfg.StorePath != DefaultDispatcherStorePath {
		t.Errorf("unset flags must keep their defaults: %+v", cfg)
	}
}

func TestDispatcherClusterRole(t *testing.T) {
	role := DispatcherClusterRole(DefaultDispatcherConfig())

	// verbs returns the verbs granted on group/resource, over all rules.
	verbs := func(group, resource string) []string {
		var out []string
		for _, rule := range role.Rules {
			if slices.Contains(rule.APIGroups, group) && slices.Contains(rule.Resources, resource) {
				out = append(out, rule.Verbs...)
			}
		}
		slices.Sort(out)
		return slices.Compact(out)
	}

	for _, tc := range []struct {
		group, resource string
		want            []string
	}{
		// Read-only: never create, update or delete Secrets.
		{"", "secrets", []string{"get", "list", "watch"}},
		{"", "namespaces", []string{"get"}},
		{"herald.dev", "webhookendpoints", []string{"get", "list", "watch"}},
		{"herald.dev", "subscriptions", []string{"get", "list", "watch"}},
		{"herald.dev", "webhookendpoints/status", []string{"get", "patch"}},
		{"herald.dev", "subscriptions/status", []string{"get", "patch"}},
		// It executes Redeliveries and reports in their status, never
		// writing their spec.
		{"herald.dev", "redeliveries", []string{"get", "list", "watch"}},
		{"herald.dev", "redeliveries/status", []string{"get", "patch"}},
		{"authentication.k8s.io", "tokenreviews", []string{"create"}},
		{"authorization.k8s.io", "subjectaccessreviews", []string{"create"}},
		// The dispatcher records Events only for pings, through the
		// events.k8s.io API; no core Events. It elects its status writer
		// with a JetStream KeyValue lease; the writer renews one Kubernetes
		// Lease (create, and get/update of that name only, below) so the
		// manager can see when no dispatcher reports.
		{"", "events", nil},
		{"events.k8s.io", "events", []string{"create", "patch"}},
		{"coordination.k8s.io", "leases", []string{"create", "get", "update"}},
		{"", "configmaps", nil},
		{"", "pods", nil},
	} {
		if got := verbs(tc.group, tc.resource); !slices.Equal(got, tc.want) {
			t.Errorf("%s %q: want verbs %v, got %v", tc.resource, tc.group, tc.want, got)
		}
	}
	for _, rule := range role.Rules {
		if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") {
			t.Errorf("rule %+v uses a wildcard", rule)
		}
		if len(rule.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", rule)
		}
		if len(rule.ResourceNames) > 0 && !slices.Equal(rule.ResourceNames, []string{heraldv1alpha1.StatusWriterLeaseName}) {
			t.Errorf("unexpected resource names in %+v", rule)
		}
		if slices.Contains(rule.Resources, "leases") && !slices.Contains(rule.Verbs, "create") &&
			!slices.Equal(rule.ResourceNames, []string{heraldv1alpha1.StatusWriterLeaseName}) {
			t.Errorf("lease rule %+v is not limited to the status writer's Lease", rule)
		}
	}

	binding := DispatcherClusterRoleBinding(DefaultDispatcherConfig())
	if binding.RoleRef.Name != role.Name || binding.RoleRef.Kind != "ClusterRole" {
		t.Errorf("binding refers to %+v, want ClusterRole %s", binding.RoleRef, role.Name)
	}
	sa := DispatcherServiceAccount(DefaultDispatcherConfig())
	if len(binding.Subjects) != 1 || binding.Subjects[0].Kind != rbacv1.ServiceAccountKind ||
		binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding subjects %+v, want ServiceAccount %s/%s", binding.Subjects, sa.Namespace, sa.Name)
	}
}

// TestDispatcherManagerHoldsGrantedPermissions checks that the kubebuilder
// RBAC markers of this package give the manager every permission of
// DispatcherClusterRole: the API server refuses to let the manager grant
// what it does not hold (it has no bind or escalate verb).
func TestDispatcherManagerHoldsGrantedPermissions(t *testing.T) {
	held := map[string]bool{} // "group/resource/verb"
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		scanner := bufio.NewScanner(f)
		for scanner.Scan() {
			marker, ok := strings.CutPrefix(strings.TrimSpace(scanner.Text()), "// +kubebuilder:rbac:")
			if !ok {
				continue
			}
			args := map[string][]string{}
			for arg := range strings.SplitSeq(marker, ",") {
				key, value, _ := strings.Cut(arg, "=")
				args[key] = strings.Split(strings.Trim(value, `"`), ";")
			}
			for _, group := range args["groups"] {
				group = strings.Trim(group, `"`)
				for _, resource := range args["resources"] {
					for _, verb := range args["verbs"] {
						held[group+"/"+resource+"/"+verb] = true
					}
				}
			}
		}
		if err := scanner.Err(); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
	}

	for _, rule := range DispatcherClusterRole(DefaultDispatcherConfig()).Rules {
		for _, group := range rule.APIGroups {
			for _, resource := range rule.Resources {
				for _, verb := range rule.Verbs {
					if !held[group+"/"+resource+"/"+verb] {
						t.Errorf("the dispatcher is granted %s on %s in group %q, "+
							"but no +kubebuilder:rbac marker gives it to the manager",
							verb, resource, group)
					}
				}
			}
		}
	}
}

func TestDispatcherObjectsMetadata(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       DispatcherConfig
		wantKinds []string
	}{
		{"embedded", embeddedConfig(), []string{
			"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "PersistentVolumeClaim", "Deployment",
		}},
		{"external", externalConfig(), []string{
			"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var kinds []string
			for _, obj := range DispatcherObjects(tc.cfg) {
				typeMeta := obj.GetObjectKind().GroupVersionKind()
				kinds = append(kinds, typeMeta.Kind)

				// TypeMeta is what server-side apply sends; it must be the
				// object's real group, version and kind.
				gvks, _, err := clientgoscheme.Scheme.ObjectKinds(obj)
				if err != nil {
					t.Fatalf("%T: %v", obj, err)
				}
				if typeMeta.Empty() || !slices.Contains(gvks, typeMeta) {
					t.Errorf("%T: TypeMeta %v, want one of %v", obj, typeMeta, gvks)
				}

				for key, want := range map[string]string{
					heraldv1alpha1.NameLabel:      "herald-dispatcher",
					heraldv1alpha1.ManagedByLabel: "herald",
					heraldv1alpha1.ComponentLabel: "dispatcher",
				} {
					if got := obj.GetLabels()[key]; got != want {
						t.Errorf("%s: label %s: want %q, got %q", typeMeta.Kind, key, want, got)
					}
				}
				if obj.GetName() != heraldv1alpha1.DispatcherName {
					t.Errorf("%s: name %q, want %q", typeMeta.Kind, obj.GetName(), heraldv1alpha1.DispatcherName)
				}
				namespaced := typeMeta.Group != rbacv1.GroupName
				if namespaced && obj.GetNamespace() != tc.cfg.Namespace || !namespaced && obj.GetNamespace() != "" {
					t.Errorf("%s: namespace %q", typeMeta.Kind, obj.GetNamespace())
				}
			}
			if !slices.Equal(kinds, tc.wantKinds) {
				t.Errorf("apply order: want %v, got %v", tc.wantKinds, kinds)
			}
		})
	}
}

// newDispatcherFakeClient is a fake client with real server-side apply
// semantics for the built-in types.
func newDispatcherFakeClient(funcs *interceptor.Funcs) client.Client {
	b := fake.NewClientBuilder().WithScheme(clientgoscheme.Scheme)
	if funcs != nil {
		b = b.WithInterceptorFuncs(*funcs)
	}
	return b.Build()
}

func TestDispatcherReconcileRepairsDrift(t *testing.T) {
	ctx := context.Background()
	cfg := embeddedConfig()
	c := newDispatcherFakeClient(nil)
	r := &DispatcherReconciler{Client: c, Config: cfg}
	req := r.request()

	if _, err := r.Reconcile(ctx, req); err != nil {
		t.Fatalf("first reconcile: %v", err)
	}
	for _, want := range DispatcherObjects(cfg) {
		got := want.DeepCopyObject().(client.Object)
		if err := c.Get(ctx, client.ObjectKeyFromObject(want), got); err != nil {
			t.Fatalf("%T %s not created: %v", want, want.GetName(), err)
		}
	}

	// Someone edits the Deployment's image and deletes the Service.
	key := types.NamespacedName{Namespace: cfg.Namespace, Name: heraldv1alpha1.DispatcherName}
	var deployment appsv1.Deployment
	if err := c.Get(ctx, key, &deployment); err != nil {
		t.Fatal(err)
	}
	deployment.Spec.Template.Spec.Containers[0].Image = "evil.example.com/dispatcher:latest"
	if err := c.Update(ctx, &deployment); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, DispatcherService(cfg)); err != nil {
		t.Fatal(err)
	}

	if _, err := r.Reconcile(ctx, req); err != nil {
		t.Fatalf("repair reconcile: %v", err)
	}
	if err := c.Get(ctx, key, &deployment); err != nil {
		t.Fatal(err)
	}
	if got := deployment.Spec.Template.Spec.Containers[0].Image; got != cfg.Image {
		t.Errorf("image after repair: want %s, got %s", cfg.Image, got)
	}
	if err := c.Get(ctx, key, &corev1.Service{}); err != nil {
		t.Errorf("service not recreated: %v", err)
	}
}

func TestDispatcherReconcileMissingNamespace(t *testing.T) {
	cfg := embeddedConfig()
	// What the API server's NamespaceLifecycle admission returns.
	notFound := apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, cfg.Namespace)
	c := newDispatcherFakeClient(&interceptor.Funcs{
		Apply: func(context.Context, client.WithWatch, runtime.ApplyConfiguration, ...client.ApplyOption) error {
			return notFound
		},
	})
	r := &DispatcherReconciler{Client: c, Config: cfg}

	_, err := r.Reconcile(context.Background(), ctrl.Request{})
	if err == nil || !strings.Contains(err.Error(), `namespace "herald-system" of the dispatcher does not exist`) {
		t.Errorf("want an error saying the namespace does not exist, got %v", err)
	}
}

func TestDispatcherReconcileInvalidConfig(t *testing.T) {
	cfg := embeddedConfig()
	cfg.Image = ""
	r := &DispatcherReconciler{Client: newDispatcherFakeClient(nil), Config: cfg}
	_, err := r.Reconcile(context.Background(), ctrl.Request{})
	if err == nil || !strings.Contains(err.Error(), "--dispatcher-image") {
		t.Errorf("want an error naming --dispatcher-image, got %v", err)
	}
}

// TestDispatcherEnvtestLabelRemovalRepaired runs against the suite's real
// API server and manager (suite_test.go; start-up reconcile and edit/delete
// drift are covered in dispatcher_controller_test.go). An object that loses
// its label leaves the label-selected cache, which the controller sees as a
// deletion; the reconcile puts the label, and the object, back.
func TestDispatcherEnvtestLabelRemovalRepaired(t *testing.T) {
	ctx := context.Background()
	key := client.ObjectKey{Name: heraldv1alpha1.DispatcherName}

	eventually := func(what string, check func() error) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := check()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	var role rbacv1.ClusterRole
	eventually("the dispatcher ClusterRole exists", func() error { return k8sClient.Get(ctx, key, &role) })

	delete(role.Labels, heraldv1alpha1.NameLabel)
	role.Rules = append(role.Rules, rbacv1.PolicyRule{
		APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"},
	})
	if err := k8sClient.Update(ctx, &role, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}

	want := DispatcherClusterRole(testDispCfg)
	eventually("label and rules are restored", func() error {
		if err := k8sClient.Get(ctx, key, &role); err != nil {
			return err
		}
		if role.Labels[heraldv1alpha1.NameLabel] != heraldv1alpha1.DispatcherName {
			return fmt.Errorf("labels %v", role.Labels)
		}
		if !equality.Semantic.DeepEqual(role.Rules, want.Rules) {
			return fmt.Errorf("rules differ from DispatcherClusterRole (-want +got):\n%s", diff.Diff(want.Rules, role.Rules))
		}
		return nil
	})
}

// TestDispatcherEnvtestQueueModeSwitch applies the Deployment to the real
// API server while switching between embedded and external NATS and back.
// Recreate must not inherit server-defaulted rollingUpdate parameters, which
// the API server rejects.
func TestDispatcherEnvtestQueueModeSwitch(t *testing.T) {
	ctx := context.Background()
	embedded := DefaultDispatcherConfig()
	embedded.Namespace = newNamespace(t)
	external := embedded
	external.NATSURL = "nats://nats:4222"
	external.Replicas = 3

	for i, cfg := range []DispatcherConfig{external, embedded, external, embedded} {
		want := DispatcherDeployment(cfg)
		if err := applyObject(ctx, k8sClient, want); err != nil {
			t.Fatalf("step %d (embedded=%v): %v", i, cfg.Embedded(), err)
		}
		var got appsv1.Deployment
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(want), &got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Strategy.Type != want.Spec.Strategy.Type || *got.Spec.Replicas != *want.Spec.Replicas ||
			len(got.Spec.Template.Spec.Volumes) != len(want.Spec.Template.Spec.Volumes) {
			t.Errorf("step %d (embedded=%v): got strategy %s, %d replicas, %d volumes", i, cfg.Embedded(),
				got.Spec.Strategy.Type, *got.Spec.Replicas, len(got.Spec.Template.Spec.Volumes))
		}
	}
}
