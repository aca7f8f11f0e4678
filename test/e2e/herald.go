package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Herald is a local Herald: control plane, manager and dispatcher.
type Herald struct {
	*Env
	Bins       Binaries
	Manager    *Process
	Dispatcher *Process
	// IngestURL is the dispatcher's ingest base URL (https).
	IngestURL string
	// IngestCA is the PEM file of the CA bundle that verifies ingest, as
	// publishers find it in ConfigMap herald-ca.
	IngestCA string

	ingestRoots *x509.CertPool

	dispatcherArgs   []string
	healthURL        string
	managerArgs      []string
	managerHealthURL string
}

// Options tune a local Herald.
type Options struct {
	// Dir holds the kubeconfig, the JetStream store, binaries and logs.
	Dir string
	// Progress, when set, is told what is happening.
	Progress func(format string, args ...any)
	// StatusInterval is the dispatcher's status write interval.
	StatusInterval time.Duration
}

// Start brings up the control plane, then the manager and the dispatcher
// (embedded JetStream, SSRF allowlist for loopback only) as processes.
func Start(ctx context.Context, o Options) (*Herald, error) {
	say := o.Progress
	if say == nil {
		say = func(string, ...any) {}
	}
	if o.StatusInterval == 0 {
		o.StatusInterval = time.Second
	}
	say("starting a local control plane (etcd + kube-apiserver from bin/k8s)")
	env, err := StartControlPlane(ctx, o.Dir)
	if err != nil {
		return nil, err
	}
	h := &Herald{Env: env}
	ok := false
	defer func() {
		if !ok {
			h.Stop()
		}
	}()

	say("building the manager and the dispatcher")
	if h.Bins, err = Build(ctx, env.Root, filepath.Join(o.Dir, "bin")); err != nil {
		return nil, err
	}

	say("starting the manager")
	managerHealth, err := FreePort()
	if err != nil {
		return nil, err
	}
	h.managerArgs = []string{"--manage-dispatcher=false", "--metrics-bind-address=0",
		"--health-probe-bind-address=127.0.0.1:" + strconv.Itoa(managerHealth), LocalIngestHostsFlag}
	h.managerHealthURL = fmt.Sprintf("http://127.0.0.1:%d/readyz", managerHealth)
	if err := h.StartManager(ctx); err != nil {
		return nil, err
	}

	say("starting the dispatcher (embedded JetStream in %s)", filepath.Join(o.Dir, "jetstream"))
	ingestPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	healthPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	tlsArgs, err := h.UseIngestCertificate(ctx)
	if err != nil {
		return nil, err
	}
	h.IngestURL = fmt.Sprintf("https://127.0.0.1:%d", ingestPort)
	h.healthURL = fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort)
	api, err := newDeliveryAPI(o.Dir)
	if err != nil {
		return nil, err
	}
	h.dispatcherArgs = append([]string{
		"--store-dir=" + filepath.Join(o.Dir, "jetstream"),
		"--ingest-addr=127.0.0.1:" + strconv.Itoa(ingestPort),
		"--health-addr=127.0.0.1:" + strconv.Itoa(healthPort),
		"--metrics-addr=0",
		"--allowed-cidrs=127.0.0.0/8,::1/128",
		"--status-interval=" + o.StatusInterval.String(),
		"--drain-timeout=10s",
		"--pod-name=dispatcher-0",
	}, tlsArgs...)
	h.dispatcherArgs = append(h.dispatcherArgs, api.dispatcherArgs()...)
	if err := h.StartDispatcher(ctx); err != nil {
		return nil, err
	}
	say("registering the delivery API (delivery.herald.dev) with the aggregator")
	if err := api.register(ctx, env); err != nil {
		return nil, err
	}
	if err := api.waitAvailable(ctx, env); err != nil {
		return nil, err
	}
	ok = true
	return h, nil
}

// StartManager (re)starts the manager process and waits until it is ready.
func (h *Herald) StartManager(ctx context.Context) error {
	p, err := h.StartProcess("manager", h.Bins.Manager, h.managerArgs...)
	if err != nil {
		return err
	}
	h.Manager = p
	return waitReady(ctx, h.managerHealthURL, p)
}

// StartDispatcher (re)starts the dispatcher process on the same store and
// waits until it is ready.
func (h *Herald) StartDispatcher(ctx context.Context) error {
	p, err := h.StartProcess("dispatcher", h.Bins.Dispatcher, h.dispatcherArgs...)
	if err != nil {
		return err
	}
	h.Dispatcher = p
	return waitReady(ctx, h.healthURL, p)
}

// RestartDispatcher stops the dispatcher gracefully and starts it again on
// the same store with extra arguments after its usual ones (a later flag
// wins), waiting until it is ready.
func (h *Herald) RestartDispatcher(ctx context.Context, extra ...string) error {
	if h.Dispatcher != nil {
		if err := h.Dispatcher.Stop(30 * time.Second); err != nil {
			return fmt.Errorf("stop the dispatcher: %w", err)
		}
	}
	p, err := h.StartProcess("dispatcher", h.Bins.Dispatcher, append(slices.Clone(h.dispatcherArgs), extra...)...)
	if err != nil {
		return err
	}
	h.Dispatcher = p
	return waitReady(ctx, h.healthURL, p)
}

func waitReady(ctx context.Context, url string, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return WaitHTTP(ctx, url, p)
}

// Stop stops the dispatcher, the manager and the control plane.
func (h *Herald) Stop() {
	for _, p := range []*Process{h.Dispatcher, h.Manager} {
		if p != nil {
			_ = p.Stop(20 * time.Second)
		}
	}
	h.Env.Stop()
}

// SigningSecret returns the current signing secret of an endpoint from its
// managed Secret, as a receiver's operator would copy it.
func (h *Herald) SigningSecret(ctx context.Context, namespace, endpoint string) (string, error) {
	s := &corev1.Secret{}
	if err := h.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: endpoint + "-herald"}, s); err != nil {
		return "", err
	}
	return string(s.Data["secret"]), nil
}

// Event is a CloudEvent to publish in structured mode.
type Event struct {
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	SpecVersion     string `json:"specversion"`
	Subject         string `json:"subject,omitempty"`
	DataContentType string `json:"datacontenttype,omitempty"`
	Data            any    `json:"data,omitempty"`
}

// Publish posts a batch of events to the namespace with token and returns
// the HTTP status and body.
func (h *Herald) Publish(ctx context.Context, namespace, token string, events []Event) (int, string, error) {
	for i := range events {
		if events[i].SpecVersion == "" {
			events[i].SpecVersion = "1.0"
		}
		if events[i].Data != nil && events[i].DataContentType == "" {
			events[i].DataContentType = "application/json"
		}
	}
	body, err := json.Marshal(events)
	if err != nil {
		return 0, "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.IngestURL+"/v1/namespaces/"+namespace+"/events", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/cloudevents-batch+json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := h.IngestClient().Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// SamplesWithReceiver renders config/samples with the healthy sample
// endpoint pointed at receiverURL instead of the fixed demo port.
func (h *Herald) SamplesWithReceiver(ctx context.Context, receiverURL string) (string, error) {
	out, err := h.Kubectl(ctx, "kustomize", filepath.Join(h.Root, "config", "samples"))
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(out, "http://127.0.0.1:9090/webhooks", receiverURL), nil
}

// ApplyYAML applies manifests in a namespace with kubectl.
func (h *Herald) ApplyYAML(ctx context.Context, namespace, manifests string) (string, error) {
	f, err := os.CreateTemp(h.Dir, "apply-*.yaml")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.Remove(f.Name()) }()
	if _, err := f.WriteString(manifests); err != nil {
		return "", err
	}
	_ = f.Close()
	return h.Kubectl(ctx, "apply", "-n", namespace, "-f", f.Name())
}

// LocalIngestHostsFlag is the manager flag that adds the loopback names to
// the ingest certificate: locally, publishers reach the dispatcher at
// 127.0.0.1 rather than at its Service's names.
const LocalIngestHostsFlag = "--dispatcher-tls-extra-hosts=127.0.0.1,localhost"

// UseIngestCertificate waits for the manager to issue the ingest
// certificate (Secret herald-dispatcher-tls, which it keeps even with
// --manage-dispatcher=false), writes it where the local dispatcher reads
// it, as the Deployment mounts it in a cluster, and returns the
// dispatcher's flags for it. It also sets IngestCA and IngestClient.
func (h *Herald) UseIngestCertificate(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	secret := &corev1.Secret{}
	key := client.ObjectKey{Namespace: heraldv1.DefaultNamespace, Name: heraldv1.IngestTLSSecretName}
	for {
		err := h.Client.Get(ctx, key, secret)
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the manager issued no ingest certificate (Secret %s): %w", key, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	dir := filepath.Join(h.Dir, "ingest-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for name, data := range secret.Data {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	h.IngestCA = filepath.Join(dir, "ca.crt")
	h.ingestRoots = x509.NewCertPool()
	if !h.ingestRoots.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		return nil, fmt.Errorf("no CA bundle in ca.crt of Secret %s", key)
	}
	return []string{
		"--ingest-tls-cert-file=" + filepath.Join(dir, "tls.crt"),
		"--ingest-tls-key-file=" + filepath.Join(dir, "tls.key"),
	}, nil
}

// IngestClient is an HTTP client that trusts the ingest CA and nothing
// else, and ignores proxies from the environment.
func (h *Herald) IngestClient() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: h.IngestTLSConfig()}}
}

// IngestTLSConfig trusts the ingest CA and nothing else.
func (h *Herald) IngestTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: h.ingestRoots, MinVersion: tls.VersionTLS12}
}
