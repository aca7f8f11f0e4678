// Command dispatcher runs Herald's data plane: CloudEvents ingest, durable
// storage in NATS JetStream, fan-out to Subscriptions, signed delivery with
// retries, and delivery-health reporting.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/deliveryapi"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/health"
	"github.com/herald-dev/herald/dispatcher/ingest"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/router"
	"github.com/herald-dev/herald/internal/idlegc"
)

// version is set at build time with -ldflags "-X main.version=…" (the
// Makefile and the Dockerfile stamp `git describe`).
var version = "dev"

type options struct {
	ingestAddr     string
	metricsAddr    string
	metricsSecure  bool
	healthAddr     string
	storeDir       string
	natsURL        string
	natsAuth       queue.NATSAuth
	streamReplicas int
	syncAlways     bool
	audience       string
	allowedCIDRs   string
	clusterCIDRs   string
	insecureIngest bool
	ingestTLS      ingestTLSFiles
	maxBodyBytes   int64
	limits         ingestLimits
	drainTimeout   time.Duration
	statusInterval time.Duration
	unmatchedHold  time.Duration
	fanOutAtIngest bool
	podName        string
	namespace      string
	logLevel       string
	gcPercent      int
	idleGCPercent  int
	memoryLimit    string

	deliveryLog            bool
	deliveryLogMaxAge      time.Duration
	deliveryLogMaxBytes    string
	deliveryLogMaxAttempts int
	deliveryAPIAddr        string
	deliveryAPICertFile    string
	deliveryAPIKeyFile     string
}

func main() {
	var o options
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	flag.StringVar(&o.ingestAddr, "ingest-addr", ":8080", "Address of the CloudEvents ingest endpoint (POST /v1/namespaces/{namespace}/events).")
	flag.StringVar(&o.metricsAddr, "metrics-addr", ":8443", "Address of the metrics endpoint (\"0\" disables it).")
	flag.BoolVar(&o.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS behind Kubernetes authentication and authorization.")
	flag.StringVar(&o.healthAddr, "health-addr", ":8081", "Address of the /healthz and /readyz probes.")
	flag.StringVar(&o.storeDir, "store-dir", "", "Directory of the embedded JetStream store (embedded mode; the Deployment mounts its PVC here).")
	flag.StringVar(&o.natsURL, "nats-url", "", "Comma-separated URLs of an external NATS cluster with JetStream; empty runs JetStream embedded in this process.")
	flag.StringVar(&o.natsAuth.CredentialsFile, "nats-creds-file", "", "External NATS: .creds file with a user JWT and NKey seed (decentralized JWT authentication).")
	flag.StringVar(&o.natsAuth.NKeySeedFile, "nats-nkey-seed-file", "", "External NATS: file with the seed of an NKey user. Excludes --nats-creds-file.")
	flag.StringVar(&o.natsAuth.CAFile, "nats-tls-ca-file", "", "External NATS: PEM CA certificates that verify the server; empty trusts the system roots.")
	flag.StringVar(&o.natsAuth.CertFile, "nats-tls-cert-file", "", "External NATS: PEM client certificate for servers that verify clients (with --nats-tls-key-file).")
	flag.StringVar(&o.natsAuth.KeyFile, "nats-tls-key-file", "", "External NATS: PEM private key of --nats-tls-cert-file.")
	flag.IntVar(&o.streamReplicas, "stream-replicas", 3, "Replicas of Herald's streams in external mode.")
	flag.BoolVar(&o.syncAlways, "sync-always", false, "Embedded mode: fsync every write before acknowledging (survives power loss, about 10x slower). Acknowledged events survive a process crash either way.")
	flag.StringVar(&o.audience, "audience", heraldv1.DefaultAudience, "Audience ServiceAccount tokens must carry to publish.")
	flag.StringVar(&o.allowedCIDRs, "allowed-cidrs", "", "Comma-separated CIDRs deliveries may reach although not public (SSRF allowlist), e.g. 127.0.0.0/8 for local development.")
	flag.StringVar(&o.clusterCIDRs, "cluster-cidrs", "", "Comma-separated pod and Service CIDRs of the cluster. Deliveries never reach them, even when they are publicly routable and even inside --allowed-cidrs.")
	flag.BoolVar(&o.insecureIngest, "insecure-ingest", false, "DEVELOPMENT ONLY: accept events without authentication or authorization.")
	o.ingestTLS.bindFlags(flag.CommandLine)
	flag.Int64Var(&o.maxBodyBytes, "max-body-bytes", ingest.DefaultMaxBodyBytes, "Largest accepted ingest request body.")
	o.limits.bindFlags(flag.CommandLine)
	flag.DurationVar(&o.drainTimeout, "drain-timeout", 45*time.Second, "How long shutdown waits for in-flight deliveries.")
	flag.DurationVar(&o.statusInterval, "status-interval", 5*time.Second, "How often delivery health is written to status (at most once per object per interval).")
	flag.BoolVar(&o.fanOutAtIngest, "fan-out-at-ingest", true, "Fan out an event in the ingest request that accepts it when its outcome is already certain (it matches, its namespace is settled, none of its endpoints is Ordered): its deliveries are stored before the 202 and the event skips the events stream. Off, every event is stored in the events stream first.")
	flag.DurationVar(&o.unmatchedHold, "unmatched-hold", router.DefaultUnmatchedHold, "How long an event that matches no Subscription is held, instead of discarded, while a WebhookEndpoint or Subscription of its namespace is being reconciled (an edit in flight, the manager restarting).")
	flag.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", heraldv1.DefaultNamespace), "Namespace the dispatcher runs in (defaults to $POD_NAMESPACE): where it renews the status writer's Lease the manager watches.")
	flag.StringVar(&o.podName, "pod-name", os.Getenv("POD_NAME"), "Name of this replica (defaults to $POD_NAME, else the host name).")
	flag.BoolVar(&o.deliveryLog, "delivery-log", true, "Keep the delivery log (every attempt of every delivery, served as deliveries.delivery.herald.dev). Off, deliveries are not recorded and the delivery API is not served.")
	flag.DurationVar(&o.deliveryLogMaxAge, "delivery-log-max-age", deliverylog.DefaultMaxAge, "How long the delivery log keeps a record.")
	flag.StringVar(&o.deliveryLogMaxBytes, "delivery-log-max-bytes", "1Gi", "Size bound of the delivery log (a quantity such as 1Gi); the oldest records go first.")
	flag.IntVar(&o.deliveryLogMaxAttempts, "delivery-log-max-attempts", deliverylog.DefaultMaxAttempts, "How many attempts of one delivery the log keeps (the most recent).")
	flag.StringVar(&o.deliveryAPIAddr, "delivery-api-addr", ":8444", "Address of the delivery API (aggregated API delivery.herald.dev, HTTPS); \"0\" disables it.")
	flag.StringVar(&o.deliveryAPICertFile, "delivery-api-tls-cert-file", "", "Serving certificate of the delivery API (reloaded when it changes); empty generates a self-signed one for localhost (development only: the APIService must then skip verification).")
	flag.StringVar(&o.deliveryAPIKeyFile, "delivery-api-tls-key-file", "", "Private key of --delivery-api-tls-cert-file.")
	flag.StringVar(&o.logLevel, "log-level", "info", "Log level: debug, info, warn or error.")
	flag.IntVar(&o.gcPercent, "gc-percent", defaultGCPercent, "Go garbage collector target (as GOGC, which overrides it): heap growth in percent between collections. Higher spends less CPU on collection and more memory.")
	flag.IntVar(&o.idleGCPercent, "idle-gc-percent", idlegc.DefaultIdlePercent, "Garbage collector target while the dispatcher is idle (the last 30 s allocated at most that headroom per 5 s on average); on becoming idle it returns the heap's free pages to the system, and 5 s that allocate more than two headrooms restore --gc-percent. 0 keeps --gc-percent always; unused when GOGC is set.")
	flag.StringVar(&o.memoryLimit, "memory-limit", "", "Soft memory limit of the Go runtime (as GOMEMLIMIT, which overrides it), a Kubernetes quantity such as 460Mi; the collector works harder near it. The manager sets it to 90% of the container's memory limit. Empty for none.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	level, err := zapcore.ParseLevel(o.logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "--log-level: %v\n", err)
		os.Exit(2)
	}
	if zapOpts.Level == nil {
		zapOpts.Level = level
	}

	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.WithName("setup").Error(err, "Dispatcher failed")
		os.Exit(1)
	}
}

// defaultGCPercent is Go's own default. Under load garbage collection takes
// a fifth to a quarter of the dispatcher's CPU (it allocates per event over
// a small live heap); 200 measured 4-7% less CPU per delivery at the
// fan-out knee, at the cost of half as much memory again (55 instead of
// 36 KiB per idle endpoint), so it is left to the operator.
const defaultGCPercent = 100

// tuneGC applies --gc-percent and --memory-limit unless GOGC or GOMEMLIMIT
// set them for the Go runtime already.
func tuneGC(o options) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(o.gcPercent)
	}
	if o.memoryLimit == "" || os.Getenv("GOMEMLIMIT") != "" {
		return nil
	}
	q, err := resource.ParseQuantity(o.memoryLimit)
	if err != nil || q.Sign() <= 0 {
		return fmt.Errorf("--memory-limit: %q is not a positive quantity such as 460Mi", o.memoryLimit)
	}
	debug.SetMemoryLimit(q.Value())
	return nil
}

// addIdleGC runs the idle garbage-collector setting (--idle-gc-percent)
// and exports its state, unless GOGC set the collector's target.
func addIdleGC(mgr manager.Manager, o options, log logr.Logger) error {
	if os.Getenv("GOGC") != "" {
		return nil
	}
	gc := idlegc.New(idlegc.Options{BusyPercent: o.gcPercent, IdlePercent: o.idleGCPercent}, log)
	idle := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "herald_dispatcher_gc_idle",
		Help: "1 while the idle garbage-collector setting (--idle-gc-percent) is in force, 0 while the dispatcher is busy.",
	}, func() float64 {
		if gc.Idle() {
			return 1
		}
		return 0
	})
	transitions := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "herald_dispatcher_gc_idle_transitions_total",
		Help: "Switches between the busy and the idle garbage-collector settings, both ways.",
	}, func() float64 { return float64(gc.Transitions()) })
	if err := metrics.Registry.Register(idle); err != nil {
		return err
	}
	if err := metrics.Registry.Register(transitions); err != nil {
		return err
	}
	return mgr.Add(gc)
}

// parseCIDRs parses the comma-separated CIDRs of the flag named flagName.
func parseCIDRs(flagName, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("--%s: %q is not a CIDR: %w", flagName, f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func run(ctx context.Context, o options) error {
	log := ctrl.Log.WithName("dispatcher")
	allowed, err := parseCIDRs("allowed-cidrs", o.allowedCIDRs)
	if err != nil {
		return err
	}
	clusterCIDRs, err := parseCIDRs("cluster-cidrs", o.clusterCIDRs)
	if err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	if o.podName == "" {
		o.podName, _ = os.Hostname()
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(heraldv1.AddToScheme(scheme))
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	clientset, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes clientset: %w", err)
	}

	metricsOpts := metricsserver.Options{BindAddress: o.metricsAddr, SecureServing: o.metricsSecure,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}}
	if o.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	gracePeriod := o.drainTimeout + 5*time.Second
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   catalog.CacheOptions(scheme),
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.healthAddr,
		GracefulShutdownTimeout: &gracePeriod,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	q, err := queue.Open(ctx, queueConfig(o, log), log.WithName("queue"))
	if err != nil {
		return fmt.Errorf("open queue: %w", err)
	}
	// Closed last, after every stage stopped (see the manager's shutdown).
	defer func() {
		if err := q.Close(); err != nil {
			log.Error(err, "Close queue")
		}
	}()
	bucketReplicas := 1
	if o.natsURL != "" {
		bucketReplicas = o.streamReplicas
	}

	deliveryLog, err := setupDeliveryLog(ctx, o, q, mgr, bucketReplicas, log.WithName("deliverylog"))
	if err != nil {
		return err
	}
	var recorder delivery.Recorder
	if deliveryLog != nil {
		recorder = deliveryLog
	}

	cat := catalog.New(mgr.GetCache(), log.WithName("catalog"))
	cat.UseAPIReader(mgr.GetAPIReader())
	if err := cat.Start(ctx); err != nil {
		return err
	}

	reporter, err := health.NewReporter(health.Options{
		BucketReplicas: bucketReplicas,
		Client:         mgr.GetClient(),
		Queue:          q,
		Catalog:        cat,
		Replica:        o.podName,
		Interval:       o.statusInterval,
		Registerer:     metrics.Registry,
		Log:            log.WithName("health"),
		Heartbeat:      statusLeaseHeartbeat(clientset, o.namespace),
	})
	if err != nil {
		return fmt.Errorf("health reporter: %w", err)
	}

	owners, err := endpointOwners(ctx, o, q)
	if err != nil {
		return err
	}
	deliveries, err := delivery.NewManager(delivery.Options{
		Owners:       owners,
		Queue:        q,
		Reporter:     reporter,
		Log:          recorder,
		Registerer:   metrics.Registry,
		Logger:       log.WithName("delivery"),
		Version:      version,
		AllowedCIDRs: allowed,
		ClusterCIDRs: clusterCIDRs,
	})
	if err != nil {
		return fmt.Errorf("delivery manager: %w", err)
	}

	// Redeliveries and pings. The delivery log is passed once it is wired
	// here (nil: dead letters only, pings not logged).
	if err := setupOperations(ctx, mgr, q, deliveryLog, reporter, deliveries, cat, log); err != nil {
		return err
	}

	rt, err := router.New(q, cat, log.WithName("router"), router.Options{
		Reporter:       reporter,
		Queued:         deliveries.Wake,
		UnmatchedHold:  o.unmatchedHold,
		ConfirmSettled: cat.ConfirmSettled,
		Registerer:     metrics.Registry,
	})
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}

	certs, err := o.ingestTLS.watcher()
	if err != nil {
		return err
	}
	if certs != nil {
		// Re-reads the files when they change (the kubelet swaps a mounted
		// Secret's files) and every few seconds, so a renewed certificate
		// is served without a restart.
		if err := mgr.Add(certs); err != nil {
			return err
		}
	}

	var fanOut ingest.FanOut
	if o.fanOutAtIngest {
		fanOut = rt
	}
	handler, err := newIngestHandler(o, q, fanOut, clientset, log.WithName("ingest"))
	if err != nil {
		return err
	}

	// Stages run as manager runnables: they start after the caches synced
	// (so the catalog is complete before the first event is routed) and stop
	// in reverse order on SIGTERM, within the graceful shutdown timeout.
	syncDeliveries := func() { deliveries.Sync(cat.Endpoints()) }
	cat.OnEndpointsChange(syncDeliveries)
	// A deleted endpoint's consumer and queued deliveries go with it;
	// otherwise they would stay forever and count against the stream's
	// consumer limit. (Every replica does this; it is idempotent.)
	cat.OnEndpointDeleted(func(namespace, name string, uid types.UID) {
		removeDeletedEndpoint(ctx, log, q, mgr.GetCache(), namespace, name, uid)
	})
	p := &pipeline{
		log:          log,
		drainTimeout: o.drainTimeout,
		catalog:      cat,
		ingest: func(ctx context.Context) error {
			return serveIngest(ctx, o.ingestAddr, certs, handler, ingest.ServerOptions{MaxConnections: o.limits.maxConnections})
		},
		removeOrphans: func(ctx context.Context) error {
			return removeOrphans(ctx, log.WithName("queue"), q, mgr.GetAPIReader())
		},
		startDelivery: syncDeliveries,
		stopDelivery:  deliveries.Stop,
		router:        rt.Run,
		reporter:      reporter.Run,
	}
	if err := mgr.Add(p); err != nil {
		return err
	}
	if err := addIdleGC(mgr, o, log.WithName("gc")); err != nil {
		return err
	}
	if err := addProbes(mgr, cat, q); err != nil {
		return err
	}

	log.Info("Starting dispatcher", "version", version, "mode", modeOf(o), "ingest", o.ingestAddr, "ingestHTTPS", certs != nil,
		"allowedCIDRs", o.allowedCIDRs, "clusterCIDRs", o.clusterCIDRs, "insecureIngest", o.insecureIngest)
	return mgr.Start(ctx)
}

// validate checks the flags that need no cluster, and applies the
// garbage-collector settings.
func (o options) validate() error {
	if err := tuneGC(o); err != nil {
		return err
	}
	if err := o.limits.validate(); err != nil {
		return err
	}
	if o.natsURL == "" && o.storeDir == "" {
		return errors.New("set --store-dir (embedded JetStream) or --nats-url (external NATS)")
	}
	if o.natsURL == "" && !o.natsAuth.IsZero() {
		return errors.New("--nats-creds-file, --nats-nkey-seed-file and --nats-tls-* are for an external NATS: set --nats-url")
	}
	return nil
}

// addProbes adds /healthz and /readyz: ready once the catalog synced and
// while NATS is connected.
func addProbes(mgr manager.Manager, cat *catalog.Catalog, q *queue.Queue) error {
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("catalog", func(*http.Request) error {
		if !cat.HasSynced() {
			return errors.New("catalog not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("queue", func(*http.Request) error {
		if !q.Connected() {
			return errors.New("not connected to NATS")
		}
		return nil
	}); err != nil {
		return err
	}
	return nil
}

// kubeconfigPath is the kubeconfig file ctrl.GetConfig reads, if any: the
// --kubeconfig flag, else $KUBECONFIG; empty in a cluster.
func kubeconfigPath() string {
	if f := flag.Lookup("kubeconfig"); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	return os.Getenv("KUBECONFIG")
}

// setupDeliveryLog opens the delivery log and adds the delivery API to mgr,
// as the --delivery-log and --delivery-api-* flags say; nil when the log
// is off.
func setupDeliveryLog(ctx context.Context, o options, q *queue.Queue, mgr manager.Manager, replicas int, log logr.Logger) (*deliverylog.Log, error) {
	if !o.deliveryLog {
		return nil, nil
	}
	deliveryLog, err := openDeliveryLog(ctx, o, q, replicas, log)
	if err != nil {
		return nil, err
	}
	if o.deliveryAPIAddr == "0" {
		return deliveryLog, nil
	}
	api, err := deliveryapi.New(deliveryapi.Options{
		Addr:       o.deliveryAPIAddr,
		CertFile:   o.deliveryAPICertFile,
		KeyFile:    o.deliveryAPIKeyFile,
		CertDir:    filepath.Join(os.TempDir(), "herald-delivery-api"),
		Kubeconfig: kubeconfigPath(),
	}, deliveryLog)
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(manager.RunnableFunc(api.Run)); err != nil {
		return nil, err
	}
	return deliveryLog, nil
}

// openDeliveryLog opens the delivery log with the --delivery-log-* flags.
func openDeliveryLog(ctx context.Context, o options, q *queue.Queue, replicas int, log logr.Logger) (*deliverylog.Log, error) {
	maxBytes, err := resource.ParseQuantity(o.deliveryLogMaxBytes)
	if err != nil || maxBytes.Sign() <= 0 {
		return nil, fmt.Errorf("--delivery-log-max-bytes: %q is not a positive quantity such as 1Gi", o.deliveryLogMaxBytes)
	}
	if o.deliveryLogMaxAge <= 0 {
		return nil, fmt.Errorf("--delivery-log-max-age: %s is not a positive duration", o.deliveryLogMaxAge)
	}
	if o.deliveryLogMaxAttempts <= 0 {
		return nil, fmt.Errorf("--delivery-log-max-attempts: %d is not positive", o.deliveryLogMaxAttempts)
	}
	l, err := deliverylog.Open(ctx, q, deliverylog.Config{
		MaxAge:      o.deliveryLogMaxAge,
		MaxBytes:    maxBytes.Value(),
		MaxAttempts: o.deliveryLogMaxAttempts,
		Replicas:    replicas,
	}, metrics.Registry, log)
	if err != nil {
		return nil, fmt.Errorf("delivery log: %w", err)
	}
	return l, nil
}

// queueConfig is the queue's configuration from the flags.
func queueConfig(o options, log logr.Logger) queue.Config {
	cfg := queue.Config{StoreDir: o.storeDir, NATSURL: o.natsURL, Auth: o.natsAuth, ConnectionName: "herald-dispatcher-" + o.podName}
	if o.natsURL != "" {
		cfg.Replicas = o.streamReplicas
	}
	if o.syncAlways {
		cfg.Sync = queue.SyncAlways
	}
	// Allowed for running the dispatcher by hand; the manager refuses such
	// a URL, because it would stand in the Deployment's arguments.
	if queue.URLsCarryUserInfo(o.natsURL) {
		log.Info("WARNING: --nats-url carries credentials, which anyone who can read this process's arguments " +
			"or its Deployment can see; use --nats-creds-file, --nats-nkey-seed-file or --nats-tls-cert-file instead")
	}
	return cfg
}

func modeOf(o options) string {
	if o.natsURL != "" {
		return "external NATS"
	}
	return "embedded JetStream"
}

// ingestLimits are the ingest's abuse limits set by flags.
type ingestLimits struct {
	namespaceRate        float64
	namespaceBurst       int
	namespaceMaxInFlight int
	maxConnections       int
	tokenReviewRate      float64
}

func (l *ingestLimits) bindFlags(fs *flag.FlagSet) {
	fs.Float64Var(&l.namespaceRate, "ingest-namespace-rate", ingest.DefaultNamespaceRate,
		"Ingest requests per second each namespace may make (a batch of up to 100 events is one request); beyond it 429 with Retry-After. "+
			"0, the default, is no rate limit: a single namespace publishing thousands of events a second is normal, and "+
			"--ingest-namespace-max-in-flight already keeps one namespace from taking every request slot.")
	fs.IntVar(&l.namespaceBurst, "ingest-namespace-burst", 0,
		"Requests a namespace may make at once under --ingest-namespace-rate; 0 is one second's worth.")
	fs.IntVar(&l.namespaceMaxInFlight, "ingest-namespace-max-in-flight", ingest.DefaultNamespaceMaxConcurrentRequests,
		fmt.Sprintf("Ingest requests of one namespace served at once, of the %d in all; beyond it 429 with Retry-After. "+
			"The default, half, leaves the other half to the other namespaces; a publisher needs far fewer for full throughput.",
			ingest.DefaultMaxConcurrentRequests))
	fs.IntVar(&l.maxConnections, "ingest-max-connections", ingest.DefaultMaxConnections,
		"Ingest connections served at once; further ones wait to be accepted. Bounds the memory idle and slow connections take (about 20 KiB each).")
	fs.Float64Var(&l.tokenReviewRate, "token-review-rate", ingest.DefaultTokenReviewRate,
		fmt.Sprintf("TokenReviews per second (burst %d) for bearer tokens without a cached decision; beyond it 429 with Retry-After, "+
			"so a flood of made-up tokens does not become a flood of API calls. A valid token is reviewed once per %s, so the default keeps 500 publishing pods authenticated.",
			ingest.DefaultTokenReviewBurst, ingest.DefaultAllowTTL))
}

func (l ingestLimits) validate() error {
	if l.namespaceRate < 0 || l.namespaceBurst < 0 || l.namespaceMaxInFlight < 1 || l.maxConnections < 1 || l.tokenReviewRate <= 0 {
		return errors.New("--ingest-namespace-rate and --ingest-namespace-burst must not be negative; " +
			"--ingest-namespace-max-in-flight, --ingest-max-connections and --token-review-rate must be positive")
	}
	return nil
}

// newIngestHandler builds the ingest handler with its authentication,
// authorization and limits.
func newIngestHandler(o options, q *queue.Queue, fanOut ingest.FanOut, clientset kubernetes.Interface, log logr.Logger) (*ingest.Handler, error) {
	authOpts := ingest.CacheOptions{}
	handler, err := ingest.NewHandler(ingest.Options{
		Queue:      q,
		FanOut:     fanOut,
		Namespaces: ingest.NewAPINamespaceChecker(clientset, authOpts),
		Authenticator: ingest.NewTokenReviewAuthenticator(clientset, o.audience, authOpts,
			ingest.ReviewLimit{Rate: o.limits.tokenReviewRate}),
		Authorizer:                     ingest.NewSubjectAccessReviewAuthorizer(clientset, authOpts),
		Insecure:                       o.insecureIngest,
		MaxBodyBytes:                   o.maxBodyBytes,
		NamespaceRate:                  o.limits.namespaceRate,
		NamespaceBurst:                 o.limits.namespaceBurst,
		NamespaceMaxConcurrentRequests: o.limits.namespaceMaxInFlight,
		Registerer:                     metrics.Registry,
		Log:                            log,
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	return handler, nil
}

// removeDeletedEndpoint removes what the queue holds for a deleted
// endpoint. It reads the queue's position at once, in the informer's
// handler: an endpoint recreated under the same name can only be routed to
// after the informer delivered its creation, so everything queued for it is
// stored after that position and survives. The removal itself runs in the
// background.
func removeDeletedEndpoint(ctx context.Context, log logr.Logger, q *queue.Queue, reader client.Reader, namespace, name string, uid types.UID) {
	log = log.WithValues("namespace", namespace, "name", name, "uid", uid)
	markCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	mark, err := q.Mark(markCtx)
	cancel()
	if err != nil {
		log.Error(err, "Deleted endpoint's deliveries stay queued until the next start")
		return
	}
	go func() {
		rmCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// A recreated endpoint keeps the consumer, whose retry timers are
		// its own deliveries' now.
		recreated := reader.Get(rmCtx, client.ObjectKey{Namespace: namespace, Name: name}, &heraldv1.WebhookEndpoint{}) == nil
		if err := q.RemoveEndpoint(rmCtx, namespace, name, mark, recreated); err != nil {
			log.Error(err, "Remove deleted endpoint's deliveries")
		}
	}()
}

// removeOrphans removes what the queue holds for endpoints that no longer
// exist: deleted while no dispatcher ran, so no replica saw the deletion.
// It runs once the catalog has synced, before delivery starts.
func removeOrphans(ctx context.Context, log logr.Logger, q *queue.Queue, reader client.Reader) error {
	stored, err := q.StoredEndpoints(ctx)
	if err != nil {
		return err
	}
	for key := range stored {
		err := reader.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Name}, &heraldv1.WebhookEndpoint{})
		if !apierrors.IsNotFound(err) {
			continue // exists, or unknown: keep
		}
		log.Info("Removing the queue of an endpoint deleted while no dispatcher ran", "namespace", key.Namespace, "name", key.Name)
		if err := q.RemoveEndpoint(ctx, key.Namespace, key.Name, queue.Mark{}, false); err != nil {
			return err
		}
	}
	return nil
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// statusLeaseHeartbeat renews the Lease (heraldv1.StatusWriterLeaseName) the
// manager watches to tell whether any dispatcher reports delivery health.
func statusLeaseHeartbeat(cs kubernetes.Interface, namespace string) func(context.Context, string, time.Duration) error {
	return func(ctx context.Context, holder string, leaseDuration time.Duration) error {
		leases := cs.CoordinationV1().Leases(namespace)
		now := metav1.NewMicroTime(time.Now())
		seconds := int32(max(leaseDuration/time.Second, 1))
		lease, err := leases.Get(ctx, heraldv1.StatusWriterLeaseName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: heraldv1.StatusWriterLeaseName},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds,
					AcquireTime: &now, RenewTime: &now},
			}, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create Lease %s/%s: %w", namespace, heraldv1.StatusWriterLeaseName, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("get Lease %s/%s: %w", namespace, heraldv1.StatusWriterLeaseName, err)
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != holder {
			lease.Spec.AcquireTime = &now
		}
		lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds, lease.Spec.RenewTime = &holder, &seconds, &now
		if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("renew Lease %s/%s: %w", namespace, heraldv1.StatusWriterLeaseName, err)
		}
		return nil
	}
}

// endpointOwners opens the endpoint ownership bucket with external NATS,
// where several replicas share the queue and each endpoint is delivered to
// by one of them at a time; nil with the embedded JetStream (one replica).
// The replica id is the pod name, so a restarted container takes its
// leases back at once.
func endpointOwners(ctx context.Context, o options, q *queue.Queue) (*queue.Owners, error) {
	if o.natsURL == "" {
		return nil, nil
	}
	owners, err := q.Owners(ctx, o.podName, queue.DefaultOwnershipTTL)
	if err != nil {
		return nil, fmt.Errorf("delivery: %w", err)
	}
	return owners, nil
}
