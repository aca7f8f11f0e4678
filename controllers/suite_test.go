package controllers

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// The envtest suite starts one real kube-apiserver and etcd with the real
// CRDs from config/crd/bases, and one manager running every controller.
var (
	testEnv     *envtest.Environment
	testCfg     *rest.Config
	k8sClient   client.Client
	testScheme  = runtime.NewScheme()
	testDispCfg DispatcherConfig
	nsCounter   atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	// No test is skipped for want of binaries: without them the suite fails
	// and says how to get them.
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test`, which builds etcd and kube-apiserver into bin/k8s and points envtest at them")
		return 1
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(os.Stderr), zap.Level(zapLevel())))

	utilruntime.Must(clientgoscheme.AddToScheme(testScheme))
	utilruntime.Must(heraldv1.AddToScheme(testScheme))
	utilruntime.Must(apiregistrationv1.AddToScheme(testScheme))

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	testCfg, err = testEnv.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
		}
	}()

	k8sClient, err = client.New(testCfg, client.Options{Scheme: testScheme})
	if err != nil {
		fmt.Fprintf(os.Stderr, "client: %v\n", err)
		return 1
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	testDispCfg = DefaultDispatcherConfig()
	testDispCfg.Namespace = "herald-system"
	if err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testDispCfg.Namespace}}); err != nil {
		fmt.Fprintf(os.Stderr, "create namespace: %v\n", err)
		return 1
	}

	mgr, err := ctrl.NewManager(testCfg, ctrl.Options{
		Scheme:  testScheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   cache.Options{ByObject: mergeByObject(DispatcherCacheOptions(testDispCfg), CABundleCacheOptions())},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		return 1
	}
	rec := mgr.GetEventRecorder("herald-manager")
	if err := (&WebhookEndpointReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: rec}).SetupWithManager(ctx, mgr); err != nil {
		fmt.Fprintf(os.Stderr, "setup endpoint controller: %v\n", err)
		return 1
	}
	if err := (&SubscriptionReconciler{Client: mgr.GetClient(), Recorder: rec}).SetupWithManager(ctx, mgr); err != nil {
		fmt.Fprintf(os.Stderr, "setup subscription controller: %v\n", err)
		return 1
	}
	if err := (&DispatcherReconciler{Client: mgr.GetClient(), Config: testDispCfg}).SetupWithManager(mgr); err != nil {
		fmt.Fprintf(os.Stderr, "setup dispatcher controller: %v\n", err)
		return 1
	}
	if err := (&IngestCertificateReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Config: testDispCfg}).SetupWithManager(mgr); err != nil {
		fmt.Fprintf(os.Stderr, "setup ingest certificate controller: %v\n", err)
		return 1
	}
	if err := (&CABundleReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Config: testDispCfg}).SetupWithManager(mgr); err != nil {
		fmt.Fprintf(os.Stderr, "setup CA bundle controller: %v\n", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()

	code := m.Run()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			fmt.Fprintf(os.Stderr, "manager stopped with error: %v\n", err)
		}
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "manager did not stop within 30s")
	}
	return code
}

func mergeByObject(byObject ...map[client.Object]cache.ByObject) map[client.Object]cache.ByObject {
	out := map[client.Object]cache.ByObject{}
	for _, m := range byObject {
		maps.Copy(out, m)
	}
	return out
}

func zapLevel() zapcore.Level {
	if os.Getenv("HERALD_TEST_VERBOSE") != "" {
		return -1
	}
	return 2 // errors only: keep test output readable
}

// startManager runs mgr until t ends (or ctx is done) and fails t when it
// stops with an error.
func startManager(t *testing.T, ctx context.Context, mgr ctrl.Manager) {
	t.Helper()
	ctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
}

// newNamespace creates a namespace of its own for one test.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("t%d-%d", time.Now().UnixNano()%1_000_000, nsCounter.Add(1))
	if err := k8sClient.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

func envtestAdmin() envtest.User {
	return envtest.User{Name: "herald-test-admin", Groups: []string{"system:masters"}}
}
