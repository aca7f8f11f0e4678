// Command manager runs Herald's control plane: the WebhookEndpoint,
// Subscription and dispatcher controllers.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"maps"
	"os"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/controllers"
)

// version is set at build time with -ldflags "-X main.version=…" (the
// Makefile and the Dockerfile stamp `git describe`).
var version = "dev"

func main() {
	var (
		showVersion          bool
		metricsAddr          string
		probeAddr            string
		secureMetrics        bool
		enableLeaderElection bool
		enableHTTP2          bool
		runDispatcher        bool
	)
	dispatcherCfg := controllers.DefaultDispatcherConfig()

	flag.BoolVar(&showVersion, "version", false, "Print the version and exit.")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "Address of the metrics endpoint (\"0\" disables it).")
	flag.BoolVar(&secureMetrics, "metrics-secure", true, "Serve metrics over HTTPS behind Kubernetes authentication and authorization.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz probes.")
	flag.BoolVar(&enableLeaderElection, "leader-elect", false, "Elect a leader so only one manager replica reconciles.")
	flag.BoolVar(&enableHTTP2, "enable-http2", false, "Serve metrics over HTTP/2 (off by default: CVE-2023-44487, CVE-2023-39325).")
	flag.BoolVar(&runDispatcher, "manage-dispatcher", true, "Create and keep the dispatcher's ServiceAccount, Service, storage, Deployment and (--dispatcher-network-policy) NetworkPolicy in --dispatcher-namespace; its RBAC ships in config/rbac. Off when the dispatcher runs elsewhere (the local demo runs it as a process).")
	dispatcherCfg.BindFlags(flag.CommandLine)
	opts := zap.Options{Development: false}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	if showVersion {
		fmt.Println(version)
		return
	}

	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	// Validated also when the dispatcher runs elsewhere: the ingest
	// certificate and the CA bundle follow the --dispatcher-tls-* flags.
	if err := dispatcherCfg.Validate(); err != nil {
		log.Error(err, "Invalid dispatcher configuration")
		os.Exit(2)
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(heraldv1.AddToScheme(scheme))

	var tlsOpts []func(*tls.Config)
	if !enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{BindAddress: metricsAddr, SecureServing: secureMetrics, TLSOpts: tlsOpts}
	if secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	cacheOpts := cache.Options{ByObject: map[client.Object]cache.ByObject{}}
	if runDispatcher {
		cacheOpts.ByObject = controllers.DispatcherCacheOptions(dispatcherCfg)
	}
	// The dispatcher watchdog reads one Lease, wherever the dispatcher runs.
	cacheOpts.ByObject[&coordinationv1.Lease{}] = controllers.StatusWriterLeaseCacheOptions(dispatcherCfg.Namespace)
	maps.Copy(cacheOpts.ByObject, controllers.CABundleCacheOptions())

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         enableLeaderElection,
		LeaderElectionID:       "herald-manager.herald.dev",
		Cache:                  cacheOpts,
	})
	if err != nil {
		log.Error(err, "Unable to create manager")
		os.Exit(1)
	}

	ctx := ctrl.SetupSignalHandler()
	if err := (&controllers.WebhookEndpointReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("herald-manager"),
	}).SetupWithManager(ctx, mgr); err != nil {
		log.Error(err, "Unable to set up controller", "controller", "WebhookEndpoint")
		os.Exit(1)
	}
	if err := (&controllers.SubscriptionReconciler{
		Client:   mgr.GetClient(),
		Recorder: mgr.GetEventRecorder("herald-manager"),
	}).SetupWithManager(ctx, mgr); err != nil {
		log.Error(err, "Unable to set up controller", "controller", "Subscription")
		os.Exit(1)
	}
	if err := (&controllers.DispatcherWatchdog{
		Client:         mgr.GetClient(),
		LeaseNamespace: dispatcherCfg.Namespace,
	}).SetupWithManager(mgr); err != nil {
		log.Error(err, "Unable to set up controller", "controller", "DispatcherWatchdog")
		os.Exit(1)
	}
	if runDispatcher {
		if err := (&controllers.DispatcherReconciler{
			Client: mgr.GetClient(),
			Config: dispatcherCfg,
		}).SetupWithManager(mgr); err != nil {
			log.Error(err, "Unable to set up controller", "controller", "Dispatcher")
			os.Exit(1)
		}
	}

	if err := setupIngestTLS(mgr, dispatcherCfg, runDispatcher); err != nil {
		log.Error(err, "Unable to set up the ingest TLS controllers")
		os.Exit(1)
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "Unable to set up health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "Unable to set up ready check")
		os.Exit(1)
	}

	log.Info("Starting manager", "version", version)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "Manager exited with an error")
		os.Exit(1)
	}
}

// setupIngestTLS runs the ingest certificate's controllers, also when the
// dispatcher runs elsewhere (--manage-dispatcher=false): the manager issues
// the certificate (unless an external issuer does) and publishes the CA
// bundle to the namespaces with Herald objects.
func setupIngestTLS(mgr ctrl.Manager, cfg controllers.DispatcherConfig, registerDeliveryAPI bool) error {
	if cfg.IngestInsecureHTTP {
		return nil
	}
	if cfg.TLSIssuer == controllers.TLSIssuerManager {
		if err := (&controllers.IngestCertificateReconciler{
			Client:    mgr.GetClient(),
			APIReader: mgr.GetAPIReader(),
			Config:    cfg,
		}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("ingest certificate controller: %w", err)
		}
	}
	bundle := &controllers.CABundleReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Config:    cfg,
	}
	if err := bundle.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("CA bundle controller: %w", err)
	}
	// The delivery API's APIService points at the dispatcher Service the
	// manager keeps; a dispatcher run elsewhere registers its own.
	if registerDeliveryAPI {
		if err := (&controllers.DeliveryAPIReconciler{
			Bundle: bundle, Client: mgr.GetClient(), Config: cfg,
		}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("delivery API controller: %w", err)
		}
	}
	return nil
}
