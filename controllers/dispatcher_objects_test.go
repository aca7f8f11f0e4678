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
	"context"
	"flag"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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

// externalWithNATSSecrets authenticates with a .creds file and a client
// certificate.
func externalWithNATSSecrets() DispatcherConfig {
	cfg := externalConfig()
	cfg.NATSCredentialsSecret = "herald-nats-user"
	cfg.NATSTLSSecret = "herald-nats-client-tls"
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
		{"external with NATS Secrets", externalWithNATSSecrets()},
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
	// Every Service port must select a container port by name, on the same
	// number but for the delivery API's, which the APIService reaches on 443.
	for _, sp := range DispatcherService(cfg).Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
			return p.Name == sp.TargetPort.StrVal && (p.ContainerPort == sp.Port || p.Name == deliveryAPIPortName)
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
	want := map[string]int32{"https": 8080, "https-metrics": 8443, "delivery-api": 443}
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
		{"nats credentials secret", func(c *DispatcherConfig) { c.NATSCredentialsSecret = "other" }, true},
		{"nats tls secret", func(c *DispatcherConfig) { c.NATSTLSSecret = "other" }, true},
		{"log level", func(c *DispatcherConfig) { c.LogLevel = "debug" }, true},
		{"memory limit", func(c *DispatcherConfig) { c.MemoryLimit = "1Gi" }, true},
		{"storage size", func(c *DispatcherConfig) { c.StorageSize = "20Gi" }, true},
		{"ingest namespace rate", func(c *DispatcherConfig) { c.IngestNamespaceRate = 100 }, true},
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
		{"NATS Secrets", func(c *DispatcherConfig) { *c = externalWithNATSSecrets() }, ""},
		{"NATS NKey Secret", func(c *DispatcherConfig) { c.NATSURL, c.NATSNKeySecret = "nats://a:4222", "nats-seed" }, ""},
		{"NATS Secret with the embedded server", func(c *DispatcherConfig) { c.NATSTLSSecret = "nats-tls" },
			"--dispatcher-nats-tls-secret"},
		{"NATS credentials and NKey Secrets", func(c *DispatcherConfig) {
			*c = externalWithNATSSecrets()
			c.NATSNKeySecret = "nats-seed"
		}, "--dispatcher-nats-nkey-secret"},
		{"bad NATS Secret name", func(c *DispatcherConfig) {
			*c = externalWithNATSSecrets()
			c.NATSCredentialsSecret = "Nats Creds"
		}, "--dispatcher-nats-credentials-secret"},
		{"bad storage class", func(c *DispatcherConfig) { c.StorageClass = "Fast SSD" }, "--dispatcher-storage-class"},
		{"empty audience", func(c *DispatcherConfig) { c.Audience = "" }, "--dispatcher-audience"},
		{"bad log level", func(c *DispatcherConfig) { c.LogLevel = "verbose" }, "--dispatcher-log-level"},
		{"privileged port", func(c *DispatcherConfig) { c.IngestPort = 80 }, "--dispatcher-ingest-port"},
		{"port collision", func(c *DispatcherConfig) { c.HealthPort = 8080 }, "--dispatcher-health-port"},
		{"relative store path", func(c *DispatcherConfig) { c.StorePath = "data" }, "--dispatcher-store-path"},
		{"store path under /tmp", func(c *DispatcherConfig) { c.StorePath = "/tmp/js" }, "--dispatcher-store-path"},
		{"ingest limits", func(c *DispatcherConfig) {
			c.IngestNamespaceRate, c.IngestNamespaceBurst, c.IngestNamespaceMaxInFlight = 0.5, 10, 8
			c.IngestMaxConnections, c.TokenReviewRate = 256, 20
		}, ""},
		{"negative namespace rate", func(c *DispatcherConfig) { c.IngestNamespaceRate = -1 }, "--dispatcher-ingest-namespace-rate"},
		{"NaN token review rate", func(c *DispatcherConfig) { c.TokenReviewRate = math.NaN() }, "--dispatcher-token-review-rate"},
		{"negative max connections", func(c *DispatcherConfig) { c.IngestMaxConnections = -1 }, "--dispatcher-ingest-max-connections"},
		{"external TLS issuer", func(c *DispatcherConfig) { c.TLSIssuer = TLSIssuerExternal }, ""},
		{"extra TLS hosts", func(c *DispatcherConfig) {
			c.TLSExtraHosts = []string{"localhost", "127.0.0.1", "::1", "ingest.example.com"}
		}, ""},
		{"unknown TLS issuer", func(c *DispatcherConfig) { c.TLSIssuer = "vault" }, "--dispatcher-tls-issuer"},
		{"bad TLS host", func(c *DispatcherConfig) { c.TLSExtraHosts = []string{"https://ingest"} }, "--dispatcher-tls-extra-hosts"},
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

// TestDispatcherNATSURLCredentialsRefused checks that the manager refuses
// credentials in --dispatcher-nats-url, which would stand in the
// Deployment's arguments, points to the Secret flags, and does not repeat
// the credentials in its error.
func TestDispatcherNATSURLCredentialsRefused(t *testing.T) {
	for _, natsURL := range []string{
		"nats://herald:s3cr3t@nats:4222",
		"nats://nats-a:4222,tls://s3cr3t@nats-b:4222",
	} {
		cfg := externalConfig()
		cfg.NATSURL = natsURL
		err := cfg.Validate()
		if err == nil {
			t.Fatalf("%s: want an error, got none", natsURL)
		}
		for _, want := range []string{"--dispatcher-nats-url", "--dispatcher-nats-credentials-secret", "--dispatcher-nats-tls-secret"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
		if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "herald:") {
			t.Errorf("error %q repeats the URL's credentials", err)
		}
	}
}

// TestDispatcherNATSSecrets checks that the NATS Secrets are mounted
// read-only, one key a file, and that the dispatcher gets the files' paths,
// never their values.
func TestDispatcherNATSSecrets(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cfg         DispatcherConfig
		wantArgs    []string
		wantVolumes map[string][]string // volume -> Secret name and keys
	}{
		{
			name: "credentials and client certificate",
			cfg:  externalWithNATSSecrets(),
			wantArgs: []string{
				"--nats-creds-file=/etc/herald/nats/nats-credentials/nats.creds",
				"--nats-tls-ca-file=/etc/herald/nats/nats-tls/ca.crt",
				"--nats-tls-cert-file=/etc/herald/nats/nats-tls/tls.crt",
				"--nats-tls-key-file=/etc/herald/nats/nats-tls/tls.key",
			},
			wantVolumes: map[string][]string{
				"nats-credentials": {"herald-nats-user", "nats.creds"},
				"nats-tls":         {"herald-nats-client-tls", "ca.crt", "tls.crt", "tls.key"},
			},
		},
		{
			name: "NKey seed",
			cfg: func() DispatcherConfig {
				cfg := externalConfig()
				cfg.NATSNKeySecret = "herald-nats-seed"
				return cfg
			}(),
			wantArgs:    []string{"--nats-nkey-seed-file=/etc/herald/nats/nats-nkey/nkey.seed"},
			wantVolumes: map[string][]string{"nats-nkey": {"herald-nats-seed", "nkey.seed"}},
		},
		{
			name: "none",
			cfg:  externalConfig(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err != nil {
				t.Fatalf("config invalid: %v", err)
			}
			d := DispatcherDeployment(tc.cfg)
			c := dispatcherContainer(t, d)

			var gotArgs []string
			for _, a := range c.Args {
				if strings.HasPrefix(a, "--nats-") && !strings.HasPrefix(a, "--nats-url=") {
					gotArgs = append(gotArgs, a)
				}
			}
			if !slices.Equal(gotArgs, tc.wantArgs) {
				t.Errorf("NATS file args:\n got %q\nwant %q", gotArgs, tc.wantArgs)
			}

			gotVolumes := map[string][]string{}
			for _, v := range d.Spec.Template.Spec.Volumes {
				// The NATS Secrets; the ingest certificate has its own test.
				if v.Secret == nil || !strings.HasPrefix(v.Name, "nats-") {
					continue
				}
				if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o440 {
					t.Errorf("volume %s: defaultMode %v, want 0440 (owner and the pod's fsGroup only)", v.Name, v.Secret.DefaultMode)
				}
				if v.Secret.Optional == nil || *v.Secret.Optional {
					t.Errorf("volume %s: the Secret must not be optional", v.Name)
				}
				got := []string{v.Secret.SecretName}
				for _, item := range v.Secret.Items {
					if item.Path != item.Key || item.Mode != nil {
						t.Errorf("volume %s: item %+v, want the key as path and the volume's mode", v.Name, item)
					}
					got = append(got, item.Key)
				}
				gotVolumes[v.Name] = got
				mount := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == v.Name })
				if mount < 0 || !c.VolumeMounts[mount].ReadOnly || c.VolumeMounts[mount].MountPath != "/etc/herald/nats/"+v.Name {
					t.Errorf("volume %s: want a read-only mount at /etc/herald/nats/%s, got mounts %+v", v.Name, v.Name, c.VolumeMounts)
				}
			}
			if len(tc.wantVolumes) == 0 && len(gotVolumes) == 0 {
				return
			}
			if !reflect.DeepEqual(gotVolumes, tc.wantVolumes) {
				t.Errorf("Secret volumes:\n got %v\nwant %v", gotVolumes, tc.wantVolumes)
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
		"--dispatcher-nats-credentials-secret=nats-user",
		"--dispatcher-nats-nkey-secret=nats-seed",
		"--dispatcher-nats-tls-secret=nats-tls",
		"--dispatcher-ingest-namespace-rate=2.5",
		"--dispatcher-ingest-namespace-burst=10",
		"--dispatcher-ingest-namespace-max-in-flight=8",
		"--dispatcher-ingest-max-connections=256",
		"--dispatcher-token-review-rate=20",
		"--dispatcher-ingest-insecure-http",
		"--dispatcher-tls-issuer=external",
		"--dispatcher-tls-extra-hosts=localhost, 127.0.0.1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Namespace != "herald" || cfg.NATSURL != "nats://nats:4222" || cfg.Replicas != 3 ||
		cfg.StorageClass != "fast" || cfg.Audience != "events" || cfg.NATSCredentialsSecret != "nats-user" ||
		cfg.NATSNKeySecret != "nats-seed" || cfg.NATSTLSSecret != "nats-tls" ||
		!slices.Equal(cfg.AllowedCIDRs, []string{"10.0.0.0/8", "fd00::/8"}) ||
		!cfg.IngestInsecureHTTP || cfg.TLSIssuer != TLSIssuerExternal ||
		!slices.Equal(cfg.TLSExtraHosts, []string{"localhost", "127.0.0.1"}) {
		t.Errorf("flags not bound: %+v", cfg)
	}
	if cfg.Image != DefaultDispatcherImage || cfg.StorePath != DefaultDispatcherStorePath {
		t.Errorf("unset flags must keep their defaults: %+v", cfg)
	}

	// The ingest limits reach the dispatcher's flags; unset, none is passed
	// and the dispatcher's defaults apply.
	limitArgs := func(cfg DispatcherConfig) []string {
		var out []string
		for _, a := range dispatcherArgs(cfg) {
			if strings.HasPrefix(a, "--ingest-namespace-") || strings.HasPrefix(a, "--ingest-max-") || strings.HasPrefix(a, "--token-review-") {
				out = append(out, a)
			}
		}
		return out
	}
	want := []string{"--ingest-namespace-rate=2.5", "--ingest-namespace-burst=10", "--ingest-namespace-max-in-flight=8",
		"--ingest-max-connections=256", "--token-review-rate=20"}
	if got := limitArgs(cfg); !slices.Equal(got, want) {
		t.Errorf("ingest limit args: got %q, want %q", got, want)
	}
	if got := limitArgs(defaults); got != nil {
		t.Errorf("default config passes ingest limit args %q, want none", got)
	}
}

func TestDispatcherObjectsMetadata(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       DispatcherConfig
		wantKinds []string
	}{
		{"embedded", embeddedConfig(), []string{
			"ServiceAccount", "Service", "PersistentVolumeClaim", "Deployment",
		}},
		{"external", externalConfig(), []string{
			"ServiceAccount", "Service", "Deployment",
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
				if obj.GetNamespace() != tc.cfg.Namespace {
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
// deletion; the reconcile puts the label, and the object, back. Here the
// same edit points the Service's selector at other pods, which would send
// publishers' tokens to them.
func TestDispatcherEnvtestLabelRemovalRepaired(t *testing.T) {
	ctx := context.Background()
	key := client.ObjectKey{Namespace: testDispCfg.Namespace, Name: heraldv1alpha1.DispatcherName}

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

	var svc corev1.Service
	eventually("the dispatcher Service exists", func() error { return k8sClient.Get(ctx, key, &svc) })

	delete(svc.Labels, heraldv1alpha1.NameLabel)
	svc.Spec.Selector = map[string]string{heraldv1alpha1.NameLabel: "someone-else"}
	if err := k8sClient.Update(ctx, &svc, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}

	want := DispatcherService(testDispCfg)
	eventually("label and selector are restored", func() error {
		if err := k8sClient.Get(ctx, key, &svc); err != nil {
			return err
		}
		if svc.Labels[heraldv1alpha1.NameLabel] != heraldv1alpha1.DispatcherName {
			return fmt.Errorf("labels %v", svc.Labels)
		}
		if !equality.Semantic.DeepEqual(svc.Spec.Selector, want.Spec.Selector) {
			return fmt.Errorf("selector differs from DispatcherService (-want +got):\n%s", diff.Diff(want.Spec.Selector, svc.Spec.Selector))
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
	// The API server checks the Secret volumes' modes and items.
	external.NATSCredentialsSecret = "nats-user"
	external.NATSTLSSecret = "nats-tls"

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

// TestDispatcherIngestTLS: by default the dispatcher serves ingest over
// HTTPS with the files of Secret herald-dispatcher-tls, mounted read-only;
// --dispatcher-ingest-insecure-http turns that off, and the port names say
// which protocol is served.
func TestDispatcherIngestTLS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		insecure bool
		wantArgs []string
		wantPort string
	}{
		{"https by default", false, []string{
			"--ingest-tls-cert-file=/etc/herald/ingest-tls/tls.crt",
			"--ingest-tls-key-file=/etc/herald/ingest-tls/tls.key",
		}, "https"},
		{"plain http on request", true, []string{"--ingest-insecure-http"}, "http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultDispatcherConfig()
			cfg.IngestInsecureHTTP = tc.insecure
			d := DispatcherDeployment(cfg)
			c := d.Spec.Template.Spec.Containers[0]
			for _, want := range tc.wantArgs {
				if !slices.Contains(c.Args, want) {
					t.Errorf("args %v lack %s", c.Args, want)
				}
			}
			if c.Ports[0].Name != tc.wantPort || DispatcherService(cfg).Spec.Ports[0].TargetPort.StrVal != tc.wantPort {
				t.Errorf("ingest port: want name %q in the container and the Service", tc.wantPort)
			}
			volume := slices.IndexFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
				return v.Secret != nil && v.Secret.SecretName == heraldv1alpha1.IngestTLSSecretName
			})
			mount := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.MountPath == "/etc/herald/ingest-tls" && m.ReadOnly
			})
			if tc.insecure != (volume < 0) || tc.insecure != (mount < 0) {
				t.Errorf("Secret %s volume at %d, read-only mount at %d; want them only with HTTPS",
					heraldv1alpha1.IngestTLSSecretName, volume, mount)
			}
		})
	}
}
