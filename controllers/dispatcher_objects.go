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
	networkingv1 "k8s.io/api/networking/v1"
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
	// DefaultDispatcherDeliveryAPIPort serves the aggregated delivery API.
	DefaultDispatcherDeliveryAPIPort = 8444
	DefaultDispatcherStorePath       = "/var/lib/herald/jetstream"
	DefaultDispatcherTLSIssuer       = TLSIssuerManager
)

// Who issues the dispatcher's ingest certificate (--dispatcher-tls-issuer).
const (
	// TLSIssuerManager: the manager keeps a CA and the certificate in
	// Secrets of the dispatcher's namespace (internal/pki).
	TLSIssuerManager = "manager"
	// TLSIssuerExternal: another tool, such as cert-manager with
	// config/components/cert-manager, writes the Secret
	// IngestTLSSecretName including ca.crt; the manager only publishes
	// that ca.crt.
	TLSIssuerExternal = "external"
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

	// Port names, shared by the container and the Service. Ingest's is
	// ingestPortName(cfg): "https", or "http" with IngestInsecureHTTP.
	metricsPortName = "https-metrics"
	healthPortName  = "health"
	// deliveryAPIPortName is the port of the aggregated delivery API; the
	// Service exposes it on 443, where APIServices point by default.
	deliveryAPIPortName = "delivery-api"

	// Volume names.
	tmpVolumeName   = "tmp"
	storeVolumeName = "jetstream"

	// Keys of the Secrets named by the --dispatcher-nats-*-secret flags.
	// The TLS keys are those of kubernetes.io/tls Secrets and cert-manager.

	// NATSCredentialsKey holds a .creds file (user JWT and NKey seed).
	NATSCredentialsKey = "nats.creds"
	// NATSNKeySeedKey holds the seed of an NKey user.
	NATSNKeySeedKey = "nkey.seed"
	// NATSCAKey holds the PEM certificates of the CA that signs the NATS
	// server's certificate.
	NATSCAKey = "ca.crt"

	// natsSecretsDir is where the NATS Secrets are mounted, one directory
	// each.
	natsSecretsDir = "/etc/herald/nats"
	// natsSecretMode makes the files readable by their owner (root) and
	// group only. The kubelet gives a Secret volume's files the pod's
	// fsGroup as group and adds group read (it would turn 0400 into 0440),
	// so the non-root dispatcher reads them through the group; 0440 says
	// so.
	natsSecretMode = 0o440

	ingestTLSVolumeName = "ingest-tls"

	// ingestTLSPath is where the ingest certificate Secret is mounted; the
	// kubelet updates the files when the Secret changes and the dispatcher
	// reloads them.
	ingestTLSPath = "/etc/herald/ingest-tls"
)

// tlsIssuers are the values of --dispatcher-tls-issuer.
var tlsIssuers = []string{TLSIssuerManager, TLSIssuerExternal}

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
	// It must not carry credentials: they would stand in the Deployment.
	NATSURL string
	// NATSCredentialsSecret names a Secret in Namespace whose key
	// NATSCredentialsKey is the .creds file of the external NATS user.
	NATSCredentialsSecret string
	// NATSNKeySecret names a Secret in Namespace whose key NATSNKeySeedKey
	// is the seed of the external NATS NKey user.
	NATSNKeySecret string
	// NATSTLSSecret names a Secret in Namespace with the CA (NATSCAKey),
	// client certificate and key (tls.crt, tls.key) for a NATS server that
	// verifies clients, as cert-manager writes them.
	NATSTLSSecret string
	// StorageSize of the embedded JetStream PersistentVolumeClaim.
	StorageSize string
	// StorageClass of the embedded JetStream PersistentVolumeClaim; empty
	// uses the cluster's default StorageClass.
	StorageClass string
	// AllowedCIDRs are the networks the SSRF guard lets deliveries reach
	// even though they are private, loopback, link-local, etc.
	AllowedCIDRs []string
	// ClusterCIDRs are the cluster's pod and Service ranges: the SSRF guard
	// refuses them even when they are publicly routable, and even inside
	// AllowedCIDRs. The NetworkPolicy denies them too.
	ClusterCIDRs []string `json:",omitempty"`
	// NetworkPolicy makes the manager apply DispatcherNetworkPolicy, which
	// limits the dispatcher's egress at the network layer as well.
	NetworkPolicy bool `json:",omitempty"`
	// NetworkPolicyCIDRs are destinations inside the denied ranges the
	// dispatcher itself must reach: the API server's addresses, an external
	// NATS. Unlike AllowedCIDRs, deliveries may not use them.
	NetworkPolicyCIDRs []string `json:",omitempty"`
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
	// DeliveryAPIPort serves the delivery log as the aggregated API
	// delivery.herald.dev, with the ingest certificate (not served when
	// ingest is plain HTTP: there is no certificate then).
	DeliveryAPIPort int
	// StorePath is where the embedded JetStream server keeps its file store.
	StorePath string

	// Ingest abuse limits, passed to the dispatcher's flags of the same
	// names without the dispatcher- prefix. Zero leaves the dispatcher's
	// default (it owns the numbers; see its -h). omitempty keeps the hash,
	// and so the pods, of a configuration that sets none unchanged.
	//
	// IngestNamespaceRate is the requests per second one namespace may
	// make; IngestNamespaceBurst how many at once.
	IngestNamespaceRate  float64 `json:",omitempty"`
	IngestNamespaceBurst int     `json:",omitempty"`
	// IngestNamespaceMaxInFlight is the requests of one namespace served at
	// once.
	IngestNamespaceMaxInFlight int `json:",omitempty"`
	// IngestMaxConnections is the ingest connections served at once.
	IngestMaxConnections int `json:",omitempty"`
	// TokenReviewRate is the TokenReviews per second for tokens without a
	// cached decision.
	TokenReviewRate float64 `json:",omitempty"`
	// Scheduling places the dispatcher's pods (node selector, tolerations,
	// affinity, priority class).
	Scheduling DispatcherScheduling
	// IngestInsecureHTTP serves ingest over plain HTTP, for clusters whose
	// service mesh already encrypts traffic between pods. Otherwise ingest
	// is HTTPS with the certificate in Secret IngestTLSSecretName.
	IngestInsecureHTTP bool
	// TLSIssuer is who issues that certificate: TLSIssuerManager or
	// TLSIssuerExternal.
	TLSIssuer string
	// TLSExtraHosts are DNS names or IP addresses the manager adds to the
	// certificate it issues, beyond the dispatcher Service's names (for
	// example a name publishers outside the cluster use, or 127.0.0.1
	// when the dispatcher runs as a local process).
	TLSExtraHosts []string
}

// DefaultDispatcherConfig returns the configuration the flags default to.
func DefaultDispatcherConfig() DispatcherConfig {
	return DispatcherConfig{
		Namespace:       DefaultDispatcherNamespace,
		Image:           DefaultDispatcherImage,
		Replicas:        DefaultDispatcherReplicas,
		StorageSize:     DefaultDispatcherStorageSize,
		Audience:        heraldv1alpha1.DefaultAudience,
		LogLevel:        DefaultDispatcherLogLevel,
		CPURequest:      DefaultDispatcherCPURequest,
		MemoryRequest:   DefaultDispatcherMemoryRequest,
		CPULimit:        DefaultDispatcherCPULimit,
		MemoryLimit:     DefaultDispatcherMemoryLimit,
		IngestPort:      DefaultDispatcherIngestPort,
		MetricsPort:     DefaultDispatcherMetricsPort,
		HealthPort:      DefaultDispatcherHealthPort,
		DeliveryAPIPort: DefaultDispatcherDeliveryAPIPort,
		StorePath:       DefaultDispatcherStorePath,
		TLSIssuer:       DefaultDispatcherTLSIssuer,
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
	fs.StringVar(&c.NATSCredentialsSecret, "dispatcher-nats-credentials-secret", d.NATSCredentialsSecret,
		"Secret in --dispatcher-namespace whose key "+NATSCredentialsKey+" is the .creds file (user JWT and NKey seed) "+
			"the dispatcher authenticates to --dispatcher-nats-url with.")
	fs.StringVar(&c.NATSNKeySecret, "dispatcher-nats-nkey-secret", d.NATSNKeySecret,
		"Secret in --dispatcher-namespace whose key "+NATSNKeySeedKey+" is the seed of the NKey user "+
			"the dispatcher authenticates to --dispatcher-nats-url with.")
	fs.StringVar(&c.NATSTLSSecret, "dispatcher-nats-tls-secret", d.NATSTLSSecret,
		"Secret in --dispatcher-namespace with keys "+NATSCAKey+", "+corev1.TLSCertKey+" and "+corev1.TLSPrivateKeyKey+
			" (as cert-manager writes them): the CA of the NATS servers and the dispatcher's client certificate.")
	fs.StringVar(&c.StorageSize, "dispatcher-storage-size", d.StorageSize,
		"Size of the embedded JetStream PersistentVolumeClaim.")
	fs.StringVar(&c.StorageClass, "dispatcher-storage-class", d.StorageClass,
		"StorageClass of the embedded JetStream PersistentVolumeClaim. Empty uses the cluster default.")
	cidrListVar(fs, &c.AllowedCIDRs, d.AllowedCIDRs, "dispatcher-allowed-cidrs",
		"Comma-separated CIDRs deliveries may reach although the SSRF guard blocks them by default "+
			"(private, loopback, link-local, ...).")
	cidrListVar(fs, &c.ClusterCIDRs, d.ClusterCIDRs, "dispatcher-cluster-cidrs",
		"Comma-separated pod and Service CIDRs of the cluster, which deliveries never reach, even inside "+
			"--dispatcher-allowed-cidrs. Set them when the cluster's ranges are publicly routable.")
	fs.BoolVar(&c.NetworkPolicy, "dispatcher-network-policy", d.NetworkPolicy,
		"Apply a NetworkPolicy that allows the dispatcher egress only to DNS, public addresses, "+
			"--dispatcher-allowed-cidrs and --dispatcher-network-policy-cidrs (needs a CNI that enforces NetworkPolicy).")
	cidrListVar(fs, &c.NetworkPolicyCIDRs, d.NetworkPolicyCIDRs, "dispatcher-network-policy-cidrs",
		"Comma-separated CIDRs the dispatcher itself must reach through --dispatcher-network-policy although they are "+
			"private: the API server's addresses (its Service IP and endpoints) and an external NATS.")
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
	fs.IntVar(&c.DeliveryAPIPort, "dispatcher-delivery-api-port", d.DeliveryAPIPort,
		"Port of the dispatcher's delivery API (the aggregated API delivery.herald.dev; the Service exposes it on 443).")
	fs.StringVar(&c.StorePath, "dispatcher-store-path", d.StorePath,
		"Directory of the embedded JetStream file store inside the dispatcher container.")
	fs.BoolVar(&c.IngestInsecureHTTP, "dispatcher-ingest-insecure-http", d.IngestInsecureHTTP,
		"Serve ingest over plain HTTP instead of HTTPS. Only for clusters whose service mesh already "+
			"encrypts traffic between pods: publishers' tokens and events cross the network.")
	fs.StringVar(&c.TLSIssuer, "dispatcher-tls-issuer", d.TLSIssuer,
		"Who issues the ingest certificate (Secret "+heraldv1alpha1.IngestTLSSecretName+"): "+
			"\"manager\" (a CA of its own in Secret "+heraldv1alpha1.CASecretName+") or "+
			"\"external\" (cert-manager or another tool writes the Secret, with ca.crt; "+
			"the manager publishes that ca.crt).")
	c.TLSExtraHosts = d.TLSExtraHosts
	fs.Var((*listFlag)(&c.TLSExtraHosts), "dispatcher-tls-extra-hosts",
		"Comma-separated DNS names or IP addresses the manager adds to the ingest certificate, "+
			"beyond the dispatcher Service's names.")
	c.bindIngestLimitFlags(fs)
	c.Scheduling.bindFlags(fs)
}

// bindIngestLimitFlags registers the flags of the dispatcher's ingest abuse
// limits. The defaults are the dispatcher's, named in the help.
func (c *DispatcherConfig) bindIngestLimitFlags(fs *flag.FlagSet) {
	const keep = " 0 keeps the dispatcher's default"
	fs.Float64Var(&c.IngestNamespaceRate, "dispatcher-ingest-namespace-rate", 0,
		"Ingest requests per second one namespace may make, beyond which it is answered 429."+keep+
			", no rate limit: one namespace publishing thousands of events a second is normal use.")
	fs.IntVar(&c.IngestNamespaceBurst, "dispatcher-ingest-namespace-burst", 0,
		"Requests a namespace may make at once under --dispatcher-ingest-namespace-rate."+keep+", one second's worth.")
	fs.IntVar(&c.IngestNamespaceMaxInFlight, "dispatcher-ingest-namespace-max-in-flight", 0,
		"Ingest requests of one namespace served at once, beyond which it is answered 429."+keep+
			", 32 of the 64 in all, so one namespace's burst leaves half to the others.")
	fs.IntVar(&c.IngestMaxConnections, "dispatcher-ingest-max-connections", 0,
		"Ingest connections served at once; further ones wait to be accepted."+keep+", 1024.")
	fs.Float64Var(&c.TokenReviewRate, "dispatcher-token-review-rate", 0,
		"TokenReviews per second for publisher tokens without a cached decision, beyond which ingest answers 429."+keep+
			", 50 (burst 100): enough for 500 publishing pods, while a flood of made-up tokens stays 50 API calls a second.")
}

// cidrListVar registers a listFlag named name on fs, writing into list,
// which starts as value.
func cidrListVar(fs *flag.FlagSet, list *[]string, value []string, name, usage string) {
	*list = value
	fs.Var((*listFlag)(list), name, usage)
}

// listFlag is a flag.Value holding a comma-separated list. Entries are
// trimmed; they are checked by Validate so that every configuration error is
// reported the same way.
type listFlag []string

func (f *listFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(*f, ",")
}

func (f *listFlag) Set(value string) error {
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

	c.validateNATS(&errs)

	for flagName, cidrs := range map[string][]string{
		"dispatcher-allowed-cidrs":        c.AllowedCIDRs,
		"dispatcher-cluster-cidrs":        c.ClusterCIDRs,
		"dispatcher-network-policy-cidrs": c.NetworkPolicyCIDRs,
	} {
		for _, cidr := range cidrs {
			if _, err := netip.ParsePrefix(cidr); err != nil {
				errs.add(flagName, "%q is not a CIDR (for example 10.0.0.0/8 or fd00::/8)", cidr)
			}
		}
	}
	if c.NetworkPolicy && len(c.NetworkPolicyCIDRs) == 0 {
		errs.add("dispatcher-network-policy-cidrs", "must list the API server's addresses with --dispatcher-network-policy "+
			"(kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes), or the dispatcher cannot reach it")
	}

	if strings.TrimSpace(c.Audience) == "" {
		errs.add("dispatcher-audience", "must not be empty")
	}

	if !slices.Contains(dispatcherLogLevels, c.LogLevel) {
		errs.add("dispatcher-log-level", "%q is not one of %s", c.LogLevel, strings.Join(dispatcherLogLevels, ", "))
	}

	c.validateIngestLimits(&errs)
	c.validateStorage(&errs)
	c.validateResources(&errs)
	c.validatePorts(&errs)
	c.Scheduling.validate(&errs)
	c.validateTLS(&errs)
	return errors.Join(errs...)
}

func (c DispatcherConfig) validateTLS(errs *flagErrors) {
	if !slices.Contains(tlsIssuers, c.TLSIssuer) {
		errs.add("dispatcher-tls-issuer", "%q is not one of %s", c.TLSIssuer, strings.Join(tlsIssuers, ", "))
	}
	for _, host := range c.TLSExtraHosts {
		if _, err := netip.ParseAddr(host); err == nil {
			continue
		}
		if msgs := validation.IsDNS1123Subdomain(host); len(msgs) > 0 {
			errs.add("dispatcher-tls-extra-hosts", "%q is neither an IP address nor a DNS name: %s", host, strings.Join(msgs, "; "))
		}
	}
}

// flagErrors collects configuration errors, each prefixed with its flag.
type flagErrors []error

func (e *flagErrors) add(flagName, format string, args ...any) {
	*e = append(*e, fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, args...)))
}

// ingestLimit is one ingest limit: the dispatcher's flag (the manager's
// has the dispatcher- prefix) and its value.
type ingestLimit struct {
	flag  string
	value float64
}

func (c DispatcherConfig) ingestLimits() []ingestLimit {
	return []ingestLimit{
		{"ingest-namespace-rate", c.IngestNamespaceRate},
		{"ingest-namespace-burst", float64(c.IngestNamespaceBurst)},
		{"ingest-namespace-max-in-flight", float64(c.IngestNamespaceMaxInFlight)},
		{"ingest-max-connections", float64(c.IngestMaxConnections)},
		{"token-review-rate", c.TokenReviewRate},
	}
}

func (c DispatcherConfig) validateIngestLimits(errs *flagErrors) {
	for _, l := range c.ingestLimits() {
		if !(l.value >= 0) || math.IsInf(l.value, 1) {
			errs.add("dispatcher-"+l.flag, "must be 0 (the dispatcher's default) or positive, got %v", l.value)
		}
	}
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
		{"dispatcher-delivery-api-port", c.DeliveryAPIPort},
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

// validateNATS checks the external NATS flags: the server URLs, and the
// Secrets, which only an external NATS uses.
func (c DispatcherConfig) validateNATS(errs *flagErrors) {
	if c.NATSURL != "" {
		for server := range strings.SplitSeq(c.NATSURL, ",") {
			if err := validateNATSURL(strings.TrimSpace(server)); err != nil {
				errs.add("dispatcher-nats-url", "%v", err)
			}
		}
	}
	for _, m := range natsSecretMounts(c) {
		switch {
		case m.secret == "":
		case c.Embedded():
			errs.add(m.flag, "is for an external NATS: set --dispatcher-nats-url too, or leave it empty")
		default:
			if msgs := validation.IsDNS1123Subdomain(m.secret); len(msgs) > 0 {
				errs.add(m.flag, "%q is not a valid Secret name: %s", m.secret, strings.Join(msgs, "; "))
			}
		}
	}
	if c.NATSCredentialsSecret != "" && c.NATSNKeySecret != "" {
		errs.add("dispatcher-nats-nkey-secret", "set it or --dispatcher-nats-credentials-secret, not both: "+
			"a .creds file carries its own seed")
	}
}

// validateNATSURL checks one server URL of --dispatcher-nats-url. Errors
// never show the URL's user part: it may be a token.
func validateNATSURL(server string) error {
	u, err := url.Parse(server)
	if err != nil {
		return errors.New("a server is not a valid URL (want for example nats://nats.nats.svc:4222)")
	}
	if u.User != nil {
		u.User = nil
		return fmt.Errorf("%q carries a user, password or token, which would stand in the dispatcher Deployment "+
			"for anyone who can read it: remove it and put the credentials in a Secret named by "+
			"--dispatcher-nats-credentials-secret, --dispatcher-nats-nkey-secret or --dispatcher-nats-tls-secret", u.String())
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Errorf("%q must use the nats, tls, ws or wss scheme", u.String())
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%q has no host", u.String())
	}
	return nil
}

// natsSecretMount is a Secret with external NATS credentials, mounted
// read-only into the dispatcher and passed to it as file paths: the values
// never appear in the Deployment.
type natsSecretMount struct {
	flag   string // the manager flag that names the Secret
	secret string // the Secret's name; empty when the flag is not set
	volume string // the pod's volume name
	// files maps each key of the Secret to the dispatcher flag that takes
	// its path. Every key is required: the kubelet does not start the pod
	// while one is missing and says which in a FailedMount event.
	files []natsSecretFile
}

type natsSecretFile struct{ key, dispatcherFlag string }

// natsSecretMounts lists the NATS Secrets, whether set or not.
func natsSecretMounts(c DispatcherConfig) []natsSecretMount {
	return []natsSecretMount{
		{"dispatcher-nats-credentials-secret", c.NATSCredentialsSecret, "nats-credentials",
			[]natsSecretFile{{NATSCredentialsKey, "nats-creds-file"}}},
		{"dispatcher-nats-nkey-secret", c.NATSNKeySecret, "nats-nkey",
			[]natsSecretFile{{NATSNKeySeedKey, "nats-nkey-seed-file"}}},
		{"dispatcher-nats-tls-secret", c.NATSTLSSecret, "nats-tls", []natsSecretFile{
			{NATSCAKey, "nats-tls-ca-file"},
			{corev1.TLSCertKey, "nats-tls-cert-file"},
			{corev1.TLSPrivateKeyKey, "nats-tls-key-file"},
		}},
	}
}

// natsSecretMountsInUse are the NATS Secrets the dispatcher mounts: those
// set, with an external NATS.
func natsSecretMountsInUse(c DispatcherConfig) []natsSecretMount {
	if c.Embedded() {
		return nil
	}
	return slices.DeleteFunc(natsSecretMounts(c), func(m natsSecretMount) bool { return m.secret == "" })
}

func (m natsSecretMount) dir() string { return path.Join(natsSecretsDir, m.volume) }

func (m natsSecretMount) podVolume() corev1.Volume {
	items := make([]corev1.KeyToPath, len(m.files))
	for i, f := range m.files {
		items[i] = corev1.KeyToPath{Key: f.key, Path: f.key}
	}
	return corev1.Volume{Name: m.volume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName:  m.secret,
		Items:       items,
		DefaultMode: ptr.To[int32](natsSecretMode),
		Optional:    ptr.To(false),
	}}}
}

func (m natsSecretMount) args() []string {
	args := make([]string, len(m.files))
	for i, f := range m.files {
		args[i] = "--" + f.dispatcherFlag + "=" + path.Join(m.dir(), f.key)
	}
	return args
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
	if len(hashed.ClusterCIDRs) == 0 {
		hashed.ClusterCIDRs = nil
	}
	// The NetworkPolicy is its own object: changing it must not restart
	// the dispatcher.
	hashed.NetworkPolicy, hashed.NetworkPolicyCIDRs = false, nil
	if len(hashed.TLSExtraHosts) == 0 {
		hashed.TLSExtraHosts = nil
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
// identity first, then the Service, the store (embedded mode only) and the
// Deployment that uses them. All are in the dispatcher's namespace. The
// dispatcher's RBAC is not among them: it ships with Herald's manifests
// (config/rbac/dispatcher, generated from dispatcher/rbac/rbac.go) and binds
// the ServiceAccount herald-dispatcher of herald-system, so the manager
// needs no RBAC verbs.
//
// When the configuration switches to an external NATS, the PVC of the
// embedded store is no longer returned but is not deleted either: it holds
// events that may not have been delivered yet, so removing it is left to the
// operator.
func DispatcherObjects(cfg DispatcherConfig) []client.Object {
	objects := []client.Object{
		DispatcherServiceAccount(cfg),
		DispatcherService(cfg),
	}
	if cfg.Embedded() {
		objects = append(objects, DispatcherPVC(cfg))
	}
	if cfg.NetworkPolicy {
		objects = append(objects, DispatcherNetworkPolicy(cfg))
	}
	return append(objects, DispatcherDeployment(cfg))
}

// DispatcherServiceAccount is the identity the dispatcher uses to talk to the
// API server; config/rbac/dispatcher binds its roles.
func DispatcherServiceAccount(cfg DispatcherConfig) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: corev1.SchemeGroupVersion.String(), Kind: "ServiceAccount"},
		ObjectMeta: dispatcherObjectMeta(cfg.Namespace),
	}
}

// DispatcherService exposes ingest (https, or http with IngestInsecureHTTP),
// metrics (https-metrics) and the delivery API (443, for the APIService).
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
					Name:       ingestPortName(cfg),
					Port:       int32(cfg.IngestPort),
					TargetPort: intstr.FromString(ingestPortName(cfg)),
					Protocol:   corev1.ProtocolTCP,
				},
				{
					Name:       metricsPortName,
					Port:       int32(cfg.MetricsPort),
					TargetPort: intstr.FromString(metricsPortName),
					Protocol:   corev1.ProtocolTCP,
				},
				{
					Name:       deliveryAPIPortName,
					Port:       DeliveryAPIServicePort,
					TargetPort: intstr.FromString(deliveryAPIPortName),
					Protocol:   corev1.ProtocolTCP,
				},
			},
		},
	}
}

// Ranges DispatcherNetworkPolicy denies the dispatcher: link-local (cloud
// metadata 169.254.169.254 included), RFC 1918 private, CGNAT, IPv6
// unique-local (fd00:ec2::254 included) and link-local. Loopback never
// leaves the pod, so a NetworkPolicy cannot and need not deny it.
var (
	deniedEgressV4 = []string{"10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"}
	deniedEgressV6 = []string{"fc00::/7", "fe80::/10"}
)

// DispatcherNetworkPolicy limits the dispatcher's egress at the network
// layer, under the SSRF guard: DNS anywhere (port 53 only: cluster DNS
// lives on a private Service address, node-local caches on a link-local
// one); every address except the denied ranges and the cluster's own
// (ClusterCIDRs); and, as exceptions, the SSRF allowlist (AllowedCIDRs,
// receivers the operator opted in) and NetworkPolicyCIDRs (the API server,
// an external NATS). NetworkPolicy rules add up, so an exception is a rule
// of its own. Ingress is not restricted by it.
func DispatcherNetworkPolicy(cfg DispatcherConfig) *networkingv1.NetworkPolicy {
	var v4Except, v6Except []string
	v4Except = append(v4Except, deniedEgressV4...)
	v6Except = append(v6Except, deniedEgressV6...)
	for _, cidr := range cfg.ClusterCIDRs {
		if p, err := netip.ParsePrefix(cidr); err == nil && p.Addr().Is4() {
			v4Except = append(v4Except, p.Masked().String())
		} else if err == nil {
			v6Except = append(v6Except, p.Masked().String())
		}
	}
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	dns := intstr.FromInt32(53)
	egress := []networkingv1.NetworkPolicyEgressRule{
		{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}}},
		{To: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: v4Except}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "::/0", Except: v6Except}},
		}},
	}
	var exceptions []networkingv1.NetworkPolicyPeer
	for _, cidr := range slices.Concat(cfg.AllowedCIDRs, cfg.NetworkPolicyCIDRs) {
		if p, err := netip.ParsePrefix(cidr); err == nil {
			exceptions = append(exceptions, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.Masked().String()}})
		}
	}
	if len(exceptions) > 0 {
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{To: exceptions})
	}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy"},
		ObjectMeta: dispatcherObjectMeta(cfg.Namespace),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: dispatcherSelectorLabels()},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      egress,
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

// ingestPortName names the ingest port after its protocol.
func ingestPortName(cfg DispatcherConfig) string {
	if cfg.IngestInsecureHTTP {
		return "http"
	}
	return "https"
}

// ingestTLSVolume mounts the ingest certificate Secret. The pod waits for
// the Secret to exist; the kubelet refreshes the files when it changes.
func ingestTLSVolume() (corev1.Volume, corev1.VolumeMount) {
	return corev1.Volume{
			Name: ingestTLSVolumeName,
			VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: heraldv1alpha1.IngestTLSSecretName,
				Items: []corev1.KeyToPath{
					{Key: corev1.TLSCertKey, Path: corev1.TLSCertKey},
					{Key: corev1.TLSPrivateKeyKey, Path: corev1.TLSPrivateKeyKey},
				},
				DefaultMode: ptr.To[int32](0o440),
			}},
		}, corev1.VolumeMount{
			Name: ingestTLSVolumeName, MountPath: ingestTLSPath, ReadOnly: true,
		}
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
		for _, m := range natsSecretMountsInUse(cfg) {
			args = append(args, m.args()...)
		}
	}
	if cfg.IngestInsecureHTTP {
		args = append(args, "--ingest-insecure-http", "--delivery-api-addr=0")
	} else {
		cert, key := path.Join(ingestTLSPath, corev1.TLSCertKey), path.Join(ingestTLSPath, corev1.TLSPrivateKeyKey)
		// The delivery API serves with the same certificate: it is for the
		// Service's names, which the aggregator checks, and the APIService
		// trusts the CA that signed it.
		args = append(args, "--ingest-tls-cert-file="+cert, "--ingest-tls-key-file="+key,
			fmt.Sprintf("--delivery-api-addr=:%d", cfg.DeliveryAPIPort),
			"--delivery-api-tls-cert-file="+cert, "--delivery-api-tls-key-file="+key)
	}
	args = append(args, "--audience="+cfg.Audience)
	if len(cfg.AllowedCIDRs) > 0 {
		args = append(args, "--allowed-cidrs="+strings.Join(cfg.AllowedCIDRs, ","))
	}
	if len(cfg.ClusterCIDRs) > 0 {
		args = append(args, "--cluster-cidrs="+strings.Join(cfg.ClusterCIDRs, ","))
	}
	if limit, ok := goMemoryLimit(cfg.MemoryLimit); ok {
		args = append(args, "--memory-limit="+limit)
	}
	args = append(args, ingestLimitArgs(cfg)...)
	return append(args, "--log-level="+cfg.LogLevel)
}

// ingestLimitArgs passes the ingest limits that are set; the dispatcher
// applies its defaults to the others.
func ingestLimitArgs(cfg DispatcherConfig) []string {
	var args []string
	for _, a := range cfg.ingestLimits() {
		if a.value > 0 {
			args = append(args, "--"+a.flag+"="+strconv.FormatFloat(a.value, 'g', -1, 64))
		}
	}
	return args
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
	for _, m := range natsSecretMountsInUse(cfg) {
		volumes = append(volumes, m.podVolume())
		mounts = append(mounts, corev1.VolumeMount{Name: m.volume, MountPath: m.dir(), ReadOnly: true})
	}
	if !cfg.IngestInsecureHTTP {
		volume, mount := ingestTLSVolume()
		volumes, mounts = append(volumes, volume), append(mounts, mount)
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
			{Name: ingestPortName(cfg), ContainerPort: int32(cfg.IngestPort), Protocol: corev1.ProtocolTCP},
			{Name: metricsPortName, ContainerPort: int32(cfg.MetricsPort), Protocol: corev1.ProtocolTCP},
			{Name: healthPortName, ContainerPort: int32(cfg.HealthPort), Protocol: corev1.ProtocolTCP},
			{Name: deliveryAPIPortName, ContainerPort: int32(cfg.DeliveryAPIPort), Protocol: corev1.ProtocolTCP},
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

	deployment := &appsv1.Deployment{
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
	cfg.Scheduling.apply(&deployment.Spec.Template.Spec)
	return deployment
}
