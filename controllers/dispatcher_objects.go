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
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Defaults of the dispatcher configuration. They are the flag defaults and
// the values of DefaultDispatcherConfig.
const (
	DefaultDispatcherNamespace     = heraldv1alpha1.DefaultNamespace
	DefaultDispatcherImage         = "ghcr.io/herald-dev/herald:latest"
	DefaultDispatcherReplicas      = 1
	DefaultDispatcherStorageSize   = "10Gi"
	DefaultDispatcherLogLevel      = "info"
	DefaultDispatcherCPURequest    = "100m"
	DefaultDispatcherMemoryRequest = "128Mi"
	DefaultDispatcherCPULimit      = "1"
	DefaultDispatcherMemoryLimit   = "512Mi"
	DefaultDispatcherIngestPort    = 8080
	DefaultDispatcherMetricsPort   = 8443
	DefaultDispatcherHealthPort    = 8081
	DefaultDispatcherStorePath     = "/var/lib/herald/jetstream"
)

// Names and values used in the dispatcher's objects.
const (
	// DispatcherComponent is the value of ComponentLabel on the dispatcher's
	// objects.
	DispatcherComponent = "dispatcher"

	// ConfigHashAnnotation on the dispatcher's pod template carries
	// DispatcherConfig.Hash, so a configuration change the pod spec would not
	// otherwise show still rolls the Deployment.
	ConfigHashAnnotation = "herald.dev/config-hash"

	// dispatcherContainerName is the name of the dispatcher container.
	dispatcherContainerName = "dispatcher"
	// dispatcherUID is the non-root user (and group) the dispatcher runs as:
	// the "nonroot" user of distroless images.
	dispatcherUID = 65532
	// dispatcherTerminationGracePeriod gives the dispatcher time to finish
	// in-flight deliveries and flush the JetStream store before SIGKILL.
	dispatcherTerminationGracePeriod = 60

	// Port names, shared by the container and the Service.
	ingestPortName  = "http"
	metricsPortName = "https-metrics"
	healthPortName  = "health"

	// Volume names.
	tmpVolumeName   = "tmp"
	storeVolumeName = "jetstream"
)

// Log levels the dispatcher accepts.
var dispatcherLogLevels = []string{"debug", "info", "warn", "error"}

// DispatcherConfig is the manager's configuration of the dispatcher. It is
// set from command-line flags (BindFlags) and is the only input of the
// dispatcher's object builders, so the objects are a pure function of it.
type DispatcherConfig struct {
	// Namespace the dispatcher runs in. It must exist; the manager does not
	// create it.
	Namespace string
	// Image of the dispatcher container.
	Image string
	// Replicas of the dispatcher Deployment. Ignored (always 1) with the
	// embedded JetStream server: two pods must never share a store.
	Replicas int
	// NATSURL of an external NATS JetStream cluster (comma-separated server
	// URLs). Empty runs an embedded JetStream server on a PersistentVolume.
	NATSURL string
	// StorageSize of the embedded JetStream PersistentVolumeClaim.
	StorageSize string
	// StorageClass of the embedded JetStream PersistentVolumeClaim; empty
	// uses the cluster's default StorageClass.
	StorageClass string
	// AllowedCIDRs are the networks the SSRF guard lets deliveries reach
	// even though they are private, loopback, link-local, etc.
	AllowedCIDRs []string
	// Audience a publisher's ServiceAccount token must carry.
	Audience string
	// LogLevel of the dispatcher: debug, info, warn or error.
	LogLevel string
	// CPURequest, MemoryRequest, CPULimit and MemoryLimit are the
	// dispatcher container's resources; an empty value leaves it unset.
	CPURequest    string
	MemoryRequest string
	CPULimit      string
	MemoryLimit   string
	// IngestPort serves the CloudEvents ingest API.
	IngestPort int
	// MetricsPort serves Prometheus metrics over HTTPS (authn/authz).
	MetricsPort int
	// HealthPort serves /healthz and /readyz.
	HealthPort int
	// StorePath is where the embedded JetStream server keeps its file store.
	StorePath string
}

// DefaultDispatcherConfig returns the configuration the flags default to.
func DefaultDispatcherConfig() DispatcherConfig {
	return DispatcherConfig{
		Namespace:     DefaultDispatcherNamespace,
		Image:         DefaultDispatcherImage,
		Replicas:      DefaultDispatcherReplicas,
		StorageSize:   DefaultDispatcherStorageSize,
		Audience:      heraldv1alpha1.DefaultAudience,
		LogLevel:      DefaultDispatcherLogLevel,
		CPURequest:    DefaultDispatcherCPURequest,
		MemoryRequest: DefaultDispatcherMemoryRequest,
		CPULimit:      DefaultDispatcherCPULimit,
		MemoryLimit:   DefaultDispatcherMemoryLimit,
		IngestPort:    DefaultDispatcherIngestPort,
		MetricsPort:   DefaultDispatcherMetricsPort,
		HealthPort:    DefaultDispatcherHealthPort,
		StorePath:     DefaultDispatcherStorePath,
	}
}

// BindFlags registers the --dispatcher-* flags on fs, writing into c. The
// flag defaults are those of DefaultDispatcherConfig.
func (c *DispatcherConfig) BindFlags(fs *flag.FlagSet) {
	d := DefaultDispatcherConfig()
	fs.StringVar(&c.Namespace, "dispatcher-namespace", d.Namespace,
		"Namespace the dispatcher runs in. It must exist: the manager does not create it.")
	fs.StringVar(&c.Image, "dispatcher-image", d.Image, "Container image of the dispatcher.")
	fs.IntVar(&c.Replicas, "dispatcher-replicas", d.Replicas,
		"Dispatcher replicas. Only honoured with --dispatcher-nats-url: "+
			"the embedded JetStream server always runs one replica.")
	fs.StringVar(&c.NATSURL, "dispatcher-nats-url", d.NATSURL,
		"URL(s) of an external NATS JetStream cluster, comma-separated. "+
			"Empty runs an embedded JetStream server on a PersistentVolume.")
	fs.StringVar(&c.StorageSize, "dispatcher-storage-size", d.StorageSize,
		"Size of the embedded JetStream PersistentVolumeClaim.")
	fs.StringVar(&c.StorageClass, "dispatcher-storage-class", d.StorageClass,
		"StorageClass of the embedded JetStream PersistentVolumeClaim. Empty uses the cluster default.")
	c.AllowedCIDRs = d.AllowedCIDRs
	fs.Var((*cidrListFlag)(&c.AllowedCIDRs), "dispatcher-allowed-cidrs",
		"Comma-separated CIDRs deliveries may reach although the SSRF guard blocks them by default "+
			"(private, loopback, link-local, ...).")
	fs.StringVar(&c.Audience, "dispatcher-audience", d.Audience,
		"Audience a publisher's ServiceAccount token must carry.")
	fs.StringVar(&c.LogLevel, "dispatcher-log-level", d.LogLevel,
		"Dispatcher log level: "+strings.Join(dispatcherLogLevels, ", ")+".")
	fs.StringVar(&c.CPURequest, "dispatcher-cpu-request", d.CPURequest,
		"CPU request of the dispatcher container. Empty for none.")
	fs.StringVar(&c.MemoryRequest, "dispatcher-memory-request", d.MemoryRequest,
		"Memory request of the dispatcher container. Empty for none.")
	fs.StringVar(&c.CPULimit, "dispatcher-cpu-limit", d.CPULimit, "CPU limit of the dispatcher container. Empty for none.")
	fs.StringVar(&c.MemoryLimit, "dispatcher-memory-limit", d.MemoryLimit,
		"Memory limit of the dispatcher container. Empty for none.")
	fs.IntVar(&c.IngestPort, "dispatcher-ingest-port", d.IngestPort, "Port of the dispatcher's CloudEvents ingest API.")
	fs.IntVar(&c.MetricsPort, "dispatcher-metrics-port", d.MetricsPort, "Port of the dispatcher's HTTPS metrics endpoint.")
	fs.IntVar(&c.HealthPort, "dispatcher-health-port", d.HealthPort, "Port of the dispatcher's /healthz and /readyz.")
	fs.StringVar(&c.StorePath, "dispatcher-store-path", d.StorePath,
		"Directory of the embedded JetStream file store inside the dispatcher container.")
}

// cidrListFlag is a flag.Value holding a comma-separated list. Entries are
// trimmed; they are checked by Validate so that every configuration error is
// reported the same way.
type cidrListFlag []string

func (f *cidrListFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(*f, ",")
}

func (f *cidrListFlag) Set(value string) error {
	var list []string
	for entry := range strings.SplitSeq(value, ",") {
		if entry = strings.TrimSpace(entry); entry != "" {
			list = append(list, entry)
		}
	}
	*f = list
	return nil
}

// Embedded reports whether the dispatcher runs an embedded JetStream server
// (no --dispatcher-nats-url).
func (c DispatcherConfig) Embedded() bool {
	return c.NATSURL == ""
}

// EffectiveReplicas is the replica count of the Deployment: 1 in embedded
// mode, because two pods must never share a JetStream store, else Replicas.
func (c DispatcherConfig) EffectiveReplicas() int32 {
	if c.Embedded() || c.Replicas < 1 {
		return 1
	}
	if c.Replicas > math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(c.Replicas)
}

// Validate checks the configuration and returns every problem, each naming
// the flag to change.
func (c DispatcherConfig) Validate() error {
	var errs flagErrors

	if c.Namespace == "" {
		errs.add("dispatcher-namespace", "must not be empty")
	} else if msgs := validation.IsDNS1123Label(c.Namespace); len(msgs) > 0 {
		errs.add("dispatcher-namespace", "%q is not a valid namespace name: %s", c.Namespace, strings.Join(msgs, "; "))
	}

	if strings.TrimSpace(c.Image) == "" {
		errs.add("dispatcher-image", "must not be empty")
	} else if strings.ContainsAny(c.Image, " \t\r\n") {
		errs.add("dispatcher-image", "%q must not contain whitespace", c.Image)
	}

	if c.Replicas < 1 || c.Replicas > math.MaxInt32 {
		errs.add("dispatcher-replicas", "must be at least 1, got %d", c.Replicas)
	}

	if c.NATSURL != "" {
		for server := range strings.SplitSeq(c.NATSURL, ",") {
			if err := validateNATSURL(strings.TrimSpace(server)); err != nil {
				errs.add("dispatcher-nats-url", "%v", err)
			}
		}
	}

	for _, cidr := range c.AllowedCIDRs {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			errs.add("dispatcher-allowed-cidrs", "%q is not a CIDR (for example 10.0.0.0/8 or fd00::/8)", cidr)
		}
	}

	if strings.TrimSpace(c.Audience) == "" {
		errs.add("dispatcher-audience", "must not be empty")
	}

	if !slices.Contains(dispatcherLogLevels, c.LogLevel) {
		errs.add("dispatcher-log-level", "%q is not one of %s", c.LogLevel, strings.Join(dispatcherLogLevels, ", "))
	}

	c.validateStorage(&errs)
	c.validateResources(&errs)
	c.validatePorts(&errs)
	return errors.Join(errs...)
}

// flagErrors collects configuration errors, each prefixed with its flag.
type flagErrors []error

func (e *flagErrors) add(flagName, format string, args ...any) {
	*e = append(*e, fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, args...)))
}

func (c DispatcherConfig) validateStorage(errs *flagErrors) {
	if q, err := resource.ParseQuantity(c.StorageSize); err != nil {
		errs.add("dispatcher-storage-size", "%q is not a quantity (for example 10Gi): %v", c.StorageSize, err)
	} else if q.Sign() <= 0 {
		errs.add("dispatcher-storage-size", "must be positive, got %q", c.StorageSize)
	}

	if c.StorageClass != "" {
		if msgs := validation.IsDNS1123Subdomain(c.StorageClass); len(msgs) > 0 {
			errs.add("dispatcher-storage-class", "%q is not a valid StorageClass name: %s",
				c.StorageClass, strings.Join(msgs, "; "))
		}
	}

	switch {
	case !path.IsAbs(c.StorePath) || path.Clean(c.StorePath) != c.StorePath:
		errs.add("dispatcher-store-path", "%q must be a clean absolute path", c.StorePath)
	case c.StorePath == "/" || c.StorePath == "/tmp" || strings.HasPrefix(c.StorePath, "/tmp/"):
		errs.add("dispatcher-store-path", "%q must not be / or under /tmp (an emptyDir is mounted there)", c.StorePath)
	}
}

func (c DispatcherConfig) validateResources(errs *flagErrors) {
	cpuRequest := errs.quantity("dispatcher-cpu-request", c.CPURequest)
	cpuLimit := errs.quantity("dispatcher-cpu-limit", c.CPULimit)
	memoryRequest := errs.quantity("dispatcher-memory-request", c.MemoryRequest)
	memoryLimit := errs.quantity("dispatcher-memory-limit", c.MemoryLimit)
	if cpuRequest != nil && cpuLimit != nil && cpuRequest.Cmp(*cpuLimit) > 0 {
		errs.add("dispatcher-cpu-request", "%s exceeds --dispatcher-cpu-limit %s", c.CPURequest, c.CPULimit)
	}
	if memoryRequest != nil && memoryLimit != nil && memoryRequest.Cmp(*memoryLimit) > 0 {
		errs.add("dispatcher-memory-request", "%s exceeds --dispatcher-memory-limit %s", c.MemoryRequest, c.MemoryLimit)
	}
}

// quantity parses an optional resource quantity flag and returns it, or nil
// when it is empty or invalid (and then records the error).
func (e *flagErrors) quantity(flagName, value string) *resource.Quantity {
	if value == "" {
		return nil
	}
	q, err := resource.ParseQuantity(value)
	if err != nil {
		e.add(flagName, "%q is not a quantity (for example 500m or 256Mi): %v", value, err)
		return nil
	}
	if q.Sign() <= 0 {
		e.add(flagName, "must be positive, got %q", value)
		return nil
	}
	return &q
}

func (c DispatcherConfig) validatePorts(errs *flagErrors) {
	used := map[int]string{}
	for _, p := range []struct {
		flag string
		port int
	}{
		{"dispatcher-ingest-port", c.IngestPort},
		{"dispatcher-metrics-port", c.MetricsPort},
		{"dispatcher-health-port", c.HealthPort},
	} {
		// The dispatcher runs as non-root with every capability dropped, so
		// it cannot bind privileged ports.
		if p.port < 1024 || p.port > 65535 {
			errs.add(p.flag, "must be between 1024 and 65535 (the dispatcher runs as non-root), got %d", p.port)
			continue
		}
		if other, dup := used[p.port]; dup {
			errs.add(p.flag, "port %d is already used by --%s", p.port, other)
			continue
		}
		used[p.port] = p.flag
	}
}

// validateNATSURL checks one server URL of --dispatcher-nats-url. Errors
// show the URL without its password: it may carry credentials.
func validateNATSURL(server string) error {
	u, err := url.Parse(server)
	if err != nil {
		return errors.New("a server is not a valid URL (want for example nats://nats.nats.svc:4222)")
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Errorf("%q must use the nats, tls, ws or wss scheme", u.Redacted())
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%q has no host", u.Redacted())
	}
	return nil
}

// Hash is a stable hash of the configuration, set on the dispatcher's pod
// template as ConfigHashAnnotation so that a configuration change rolls the
// Deployment. The replica count is left out: scaling must not restart pods.
func (c DispatcherConfig) Hash() string {
	hashed := c
	hashed.Replicas = 0
	// nil and empty mean the same; hash them the same.
	if len(hashed.AllowedCIDRs) == 0 {
		hashed.AllowedCIDRs = nil
	}
	// Marshalling a struct of strings, ints and a string slice cannot fail,
	// and its field order is fixed, so the encoding is stable.
	encoded, err := json.Marshal(hashed)
	if err != nil {
		panic(fmt.Sprintf("encode dispatcher config: %v", err))
	}
	sum := sha256.Sum256(encoded)
	return hex.EncodeToString(sum[:8])
}

// DispatcherLabels are the labels on every object of the dispatcher.
func DispatcherLabels() map[string]string {
	return map[string]string{
		heraldv1alpha1.NameLabel:      heraldv1alpha1.DispatcherName,
		heraldv1alpha1.ManagedByLabel: heraldv1alpha1.ManagedByValue,
		heraldv1alpha1.ComponentLabel: DispatcherComponent,
	}
}

// dispatcherSelectorLabels select the dispatcher's pods. A Deployment's
// selector is immutable: never change them.
func dispatcherSelectorLabels() map[string]string {
	return map[string]string{
		heraldv1alpha1.NameLabel:      heraldv1alpha1.DispatcherName,
		heraldv1alpha1.ComponentLabel: DispatcherComponent,
	}
}

func dispatcherObjectMeta(namespace string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      heraldv1alpha1.DispatcherName,
		Namespace: namespace,
		Labels:    DispatcherLabels(),
	}
}

// DispatcherObjects returns every object of the dispatcher in apply order:
// identity and RBAC first, then the Service, the store (embedded mode only)
// and the Deployment that uses them.
//
// When the configuration switches to an external NATS, the PVC of the
// embedded store is no longer returned but is not deleted either: it holds
// events that may not have been delivered yet, so removing it is left to the
// operator.
func DispatcherObjects(cfg DispatcherConfig) []client.Object {
	objects := []client.Object{
		DispatcherServiceAccount(cfg),
		DispatcherClusterRole(cfg),
		DispatcherClusterRoleBinding(cfg),
		DispatcherService(cfg),
	}
	if cfg.Embedded() {
		objects = append(objects, DispatcherPVC(cfg))
	}
	return append(objects, DispatcherDeployment(cfg))
}

// DispatcherServiceAccount is the identity the dispatcher uses to talk to the
// API server.
func DispatcherServiceAccount(cfg DispatcherConfig) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: corev1.SchemeGroupVersion.String(), Kind: "ServiceAccount"},
		ObjectMeta: dispatcherObjectMeta(cfg.Namespace),
	}
}

// DispatcherClusterRole holds the least privilege the dispatcher needs. The
// dispatcher serves every namespace, so the role is cluster-wide. The manager
// must itself hold every permission granted here (RBAC escalation
// prevention); see the kubebuilder markers in dispatcher_controller.go.
func DispatcherClusterRole(_ DispatcherConfig) *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRole"},
		ObjectMeta: dispatcherObjectMeta(""),
		Rules: []rbacv1.PolicyRule{
			// Informers on endpoints and subscriptions: routing and delivery
			// settings come from their specs.
			{
				APIGroups: []string{heraldv1alpha1.GroupVersion.Group},
				Resources: []string{"webhookendpoints", "subscriptions"},
				Verbs:     []string{"get", "list", "watch"},
			},
			// The health reporter server-side applies status.delivery and
			// the DeliveryHealthy condition under its own field manager.
			{
				APIGroups: []string{heraldv1alpha1.GroupVersion.Group},
				Resources: []string{"webhookendpoints/status", "subscriptions/status"},
				Verbs:     []string{"get", "patch"},
			},
			// The dispatcher executes Redeliveries (it owns the queue) and
			// reports their progress in their status; it never creates,
			// changes or deletes them.
			{
				APIGroups: []string{heraldv1alpha1.GroupVersion.Group},
				Resources: []string{"redeliveries"},
				Verbs:     []string{"get", "list", "watch"},
			},
			{
				APIGroups: []string{heraldv1alpha1.GroupVersion.Group},
				Resources: []string{"redeliveries/status"},
				Verbs:     []string{"get", "patch"},
			},
			// A ping's outcome is an Event on the endpoint (PingSucceeded,
			// PingFailed).
			{
				APIGroups: []string{"events.k8s.io"},
				Resources: []string{"events"},
				Verbs:     []string{"create", "patch"},
			},
			// Signing keys, header values and TLS material of each endpoint,
			// from the Secret the manager compiles. RBAC cannot scope by
			// label, so this grants every Secret; the dispatcher's informer
			// is label-selected on herald.dev/secret-type=endpoint and never
			// reads any other Secret. Read-only: the dispatcher never writes
			// Secrets.
			{
				APIGroups: []string{""},
				Resources: []string{"secrets"},
				Verbs:     []string{"get", "list", "watch"},
			},
			// Ingest answers 404 for events published to a namespace that
			// does not exist (a cached GET per namespace).
			{
				APIGroups: []string{""},
				Resources: []string{"namespaces"},
				Verbs:     []string{"get"},
			},
			// Ingest and the metrics endpoint authenticate bearer tokens.
			{
				APIGroups: []string{"authentication.k8s.io"},
				Resources: []string{"tokenreviews"},
				Verbs:     []string{"create"},
			},
			// Ingest authorizes publishers (create events.herald.dev in the
			// namespace) and the metrics endpoint authorizes scrapers.
			{
				APIGroups: []string{"authorization.k8s.io"},
				Resources: []string{"subjectaccessreviews"},
				Verbs:     []string{"create"},
			},
			// The replica writing delivery health renews a Lease so the
			// manager can tell when no dispatcher reports (DeliveryHealthy
			// Unknown, DispatcherNotReporting). Create cannot be limited
			// to a name; get and update are. Which replica writes is
			// decided in a JetStream KeyValue bucket (dispatcher/health),
			// not by this Lease.
			{
				APIGroups: []string{"coordination.k8s.io"},
				Resources: []string{"leases"},
				Verbs:     []string{"create"},
			},
			{
				APIGroups:     []string{"coordination.k8s.io"},
				Resources:     []string{"leases"},
				ResourceNames: []string{heraldv1alpha1.StatusWriterLeaseName},
				Verbs:         []string{"get", "update"},
			},
		},
	}
}

// DispatcherClusterRoleBinding binds DispatcherClusterRole to the
// dispatcher's ServiceAccount.
func DispatcherClusterRoleBinding(cfg DispatcherConfig) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRoleBinding"},
		ObjectMeta: dispatcherObjectMeta(""),
		RoleRef: rbacv1.RoleRef{
			APIGroup: rbacv1.GroupName,
			Kind:     "ClusterRole",
			Name:     heraldv1alpha1.DispatcherName,
		},
		Subjects: []rbacv1.Subject{{
			Kind:      rbacv1.ServiceAccountKind,
			Name:      heraldv1alpha1.DispatcherName,
			Namespace: cfg.Namespace,
		}},
	}
}

// DispatcherService exposes ingest (http) and metrics (https-metrics).
func DispatcherService(cfg DispatcherConfig) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: corev1.SchemeGroupVersion.String(), Kind: "Service"},
		ObjectMeta: dispatcherObjectMeta(cfg.Namespace),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: dispatcherSelectorLabels(),
			// Protocol is set explicitly: it is part of the list-map key of
			// ports, and server-side apply rejects entries without it.
			Ports: []corev1.ServicePort{
				{
					Name:       ingestPortName,
					Port:       int32(cfg.IngestPort),
					TargetPort: intstr.FromString(ingestPortName),
					Protocol:   corev1.ProtocolTCP,
				},
				{
					Name:       metricsPortName,
					Port:       int32(cfg.MetricsPort),
					TargetPort: intstr.FromString(metricsPortName),
					Protocol:   corev1.ProtocolTCP,
				},
			},
		},
	}
}

// DispatcherPVC is the volume of the embedded JetStream file store. Only
// the size can change after creation (volume expansion, if the StorageClass
// allows it); a changed StorageClass is rejected by the API server.
func DispatcherPVC(cfg DispatcherConfig) *corev1.PersistentVolumeClaim {
	pvc := &corev1.PersistentVolumeClaim{
		TypeMeta:   metav1.TypeMeta{APIVersion: corev1.SchemeGroupVersion.String(), Kind: "PersistentVolumeClaim"},
		ObjectMeta: dispatcherObjectMeta(cfg.Namespace),
		Spec: corev1.PersistentVolumeClaimSpec{
			// One pod writes the store; see the Recreate strategy.
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{},
			},
		},
	}
	if q, err := resource.ParseQuantity(cfg.StorageSize); err == nil {
		pvc.Spec.Resources.Requests[corev1.ResourceStorage] = q
	}
	if cfg.StorageClass != "" {
		pvc.Spec.StorageClassName = ptr.To(cfg.StorageClass)
	}
	return pvc
}

// dispatcherArgs are the dispatcher's command-line arguments.
func dispatcherArgs(cfg DispatcherConfig) []string {
	args := []string{
		"--ingest-addr=:" + strconv.Itoa(cfg.IngestPort),
		"--metrics-addr=:" + strconv.Itoa(cfg.MetricsPort),
		"--health-addr=:" + strconv.Itoa(cfg.HealthPort),
	}
	if cfg.Embedded() {
		args = append(args, "--store-dir="+cfg.StorePath)
	} else {
		args = append(args, "--nats-url="+cfg.NATSURL)
	}
	args = append(args, "--audience="+cfg.Audience)
	if len(cfg.AllowedCIDRs) > 0 {
		args = append(args, "--allowed-cidrs="+strings.Join(cfg.AllowedCIDRs, ","))
	}
	if limit, ok := goMemoryLimit(cfg.MemoryLimit); ok {
		args = append(args, "--memory-limit="+limit)
	}
	return append(args, "--log-level="+cfg.LogLevel)
}

// goMemoryLimit is the Go runtime's soft memory limit (in bytes) for a
// container memory limit: 90% of it, leaving room for memory the Go
// runtime does not manage.
func goMemoryLimit(containerLimit string) (string, bool) {
	if containerLimit == "" {
		return "", false
	}
	q, err := resource.ParseQuantity(containerLimit)
	if err != nil || q.Sign() <= 0 {
		return "", false // rejected by Validate
	}
	return strconv.FormatInt(q.Value()/10*9, 10), true
}

// dispatcherResources converts the resource flags; empty values stay unset.
// Invalid quantities are rejected by Validate before objects are built.
func dispatcherResources(cfg DispatcherConfig) corev1.ResourceRequirements {
	var res corev1.ResourceRequirements
	set := func(list *corev1.ResourceList, name corev1.ResourceName, value string) {
		q, err := resource.ParseQuantity(value)
		if value == "" || err != nil {
			return
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[name] = q
	}
	set(&res.Requests, corev1.ResourceCPU, cfg.CPURequest)
	set(&res.Requests, corev1.ResourceMemory, cfg.MemoryRequest)
	set(&res.Limits, corev1.ResourceCPU, cfg.CPULimit)
	set(&res.Limits, corev1.ResourceMemory, cfg.MemoryLimit)
	return res
}

// DispatcherDeployment runs the dispatcher. It meets the Pod Security
// "restricted" profile. With the embedded JetStream server it runs exactly
// one replica with the Recreate strategy, since two pods must never open the
// same store; with an external NATS it rolls and scales freely.
func DispatcherDeployment(cfg DispatcherConfig) *appsv1.Deployment {
	volumes := []corev1.Volume{{
		// The root filesystem is read-only; /tmp is the only scratch space.
		Name:         tmpVolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
	}}
	mounts := []corev1.VolumeMount{{Name: tmpVolumeName, MountPath: "/tmp"}}

	strategy := appsv1.DeploymentStrategy{
		Type: appsv1.RollingUpdateDeploymentStrategyType,
		// Set explicitly so that the manager owns these fields: switching to
		// Recreate then removes them instead of leaving server defaults that
		// the API server rejects alongside Recreate. Surging first keeps
		// delivery capacity during a rollout.
		RollingUpdate: &appsv1.RollingUpdateDeployment{
			MaxUnavailable: ptr.To(intstr.FromInt32(0)),
			MaxSurge:       ptr.To(intstr.FromInt32(1)),
		},
	}
	if cfg.Embedded() {
		strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
		volumes = append(volumes, corev1.Volume{
			Name: storeVolumeName,
			VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
				ClaimName: heraldv1alpha1.DispatcherName,
			}},
		})
		mounts = append(mounts, corev1.VolumeMount{Name: storeVolumeName, MountPath: cfg.StorePath})
	}

	healthProbe := func(urlPath string) corev1.ProbeHandler {
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path:   urlPath,
			Port:   intstr.FromString(healthPortName),
			Scheme: corev1.URISchemeHTTP,
		}}
	}

	podLabels := DispatcherLabels()
	container := corev1.Container{
		Name:    dispatcherContainerName,
		Image:   cfg.Image,
		Command: []string{"/dispatcher"},
		Args:    dispatcherArgs(cfg),
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{
				APIVersion: "v1", FieldPath: "metadata.name",
			}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{
				APIVersion: "v1", FieldPath: "metadata.namespace",
			}}},
		},
		// Protocol is part of the list-map key of container ports; server-side
		// apply rejects entries without it.
		Ports: []corev1.ContainerPort{
			{Name: ingestPortName, ContainerPort: int32(cfg.IngestPort), Protocol: corev1.ProtocolTCP},
			{Name: metricsPortName, ContainerPort: int32(cfg.MetricsPort), Protocol: corev1.ProtocolTCP},
			{Name: healthPortName, ContainerPort: int32(cfg.HealthPort), Protocol: corev1.ProtocolTCP},
		},
		Resources: dispatcherResources(cfg),
		// Recovering a large JetStream store can take minutes: the startup
		// probe holds off the liveness probe until /healthz first succeeds.
		StartupProbe: &corev1.Probe{
			ProbeHandler:     healthProbe("/healthz"),
			PeriodSeconds:    5,
			FailureThreshold: 60,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     healthProbe("/healthz"),
			PeriodSeconds:    20,
			TimeoutSeconds:   5,
			FailureThreshold: 3,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:     healthProbe("/readyz"),
			PeriodSeconds:    10,
			TimeoutSeconds:   5,
			FailureThreshold: 3,
		},
		VolumeMounts: mounts,
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			ReadOnlyRootFilesystem:   ptr.To(true),
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](dispatcherUID),
			RunAsGroup:               ptr.To[int64](dispatcherUID),
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}

	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: appsv1.SchemeGroupVersion.String(), Kind: "Deployment"},
		ObjectMeta: dispatcherObjectMeta(cfg.Namespace),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(cfg.EffectiveReplicas()),
			Selector: &metav1.LabelSelector{MatchLabels: dispatcherSelectorLabels()},
			Strategy: strategy,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels: podLabels,
					Annotations: map[string]string{
						ConfigHashAnnotation:                      cfg.Hash(),
						"kubectl.kubernetes.io/default-container": dispatcherContainerName,
					},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName: heraldv1alpha1.DispatcherName,
					// The dispatcher watches resources, writes status and
					// reviews tokens: it needs its token.
					AutomountServiceAccountToken:  ptr.To(true),
					TerminationGracePeriodSeconds: ptr.To[int64](dispatcherTerminationGracePeriod),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: ptr.To(true),
						RunAsUser:    ptr.To[int64](dispatcherUID),
						RunAsGroup:   ptr.To[int64](dispatcherUID),
						// Makes the store volume writable by the non-root
						// user; OnRootMismatch avoids a recursive chown of a
						// large store on every start.
						FSGroup:             ptr.To[int64](dispatcherUID),
						FSGroupChangePolicy: ptr.To(corev1.FSGroupChangeOnRootMismatch),
						SeccompProfile:      &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{container},
					Volumes:    volumes,
				},
			},
		},
	}
}
