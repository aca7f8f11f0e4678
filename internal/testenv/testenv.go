// Package testenv gives the dispatcher's tests one envtest API server per
// test binary, with Herald's CRDs from config/crd/bases, started by the
// first test that needs it.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

var (
	once      sync.Once
	startErr  error
	env       *envtest.Environment
	config    *rest.Config
	k8sClient client.Client
	nsCounter atomic.Int64
)

// Scheme has the Kubernetes and Herald types.
var Scheme = func() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(heraldv1.AddToScheme(s))
	return s
}()

// Client returns a client of the test binary's API server, starting it
// on first use. Without the binaries the test fails — it is never
// skipped.
func Client(t testing.TB) client.Client {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make test`, which builds etcd and kube-apiserver into bin/k8s and points envtest at them")
	}
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		env = &envtest.Environment{
			CRDDirectoryPaths:     []string{filepath.Join(filepath.Dir(file), "..", "..", "config", "crd", "bases")},
			ErrorIfCRDPathMissing: true,
		}
		cfg, err := env.Start()
		if err != nil {
			startErr = fmt.Errorf("start envtest: %w", err)
			env = nil
			return
		}
		config = cfg
		k8sClient, startErr = client.New(cfg, client.Options{Scheme: Scheme})
	})
	if startErr != nil {
		t.Fatal(startErr)
	}
	return k8sClient
}

// Config is the API server's client configuration; call Client first.
func Config() *rest.Config { return config }

// Stop stops the API server if a test started it; call it from TestMain.
func Stop() {
	if env == nil {
		return
	}
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
	}
}

// Namespace creates a namespace named after prefix, unique in the run.
func Namespace(t testing.TB, c client.Client, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1_000_000, nsCounter.Add(1))
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}
