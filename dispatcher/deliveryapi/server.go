// Package deliveryapi serves the delivery log as the Kubernetes aggregated
// API delivery.herald.dev/v1alpha1, resource deliveries: get, list and
// watch, with label selector herald.dev/endpoint and field selector
// status.phase. It is built on k8s.io/apiserver as metrics-server is:
// requests come through the kube-apiserver's aggregator, authentication
// and authorization are delegated to the kube-apiserver (TokenReview,
// SubjectAccessReview, the front proxy's client certificate), so RBAC on
// deliveries.delivery.herald.dev decides who sees what.
package deliveryapi

import (
	"context"
	"fmt"
	"net"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/deliveryapi/openapi"
)

// Options configure the API server.
type Options struct {
	// Addr is host:port to listen on.
	Addr string
	// CertFile and KeyFile are the serving certificate (reloaded when
	// they change). Empty: a self-signed certificate for localhost in
	// CertDir, for development.
	CertFile, KeyFile string
	// CertDir holds generated self-signed certificates.
	CertDir string
	// Kubeconfig is the file of the kube-apiserver to delegate
	// authentication and authorization to; empty uses the in-cluster
	// configuration.
	Kubeconfig string
}

// Server is the delivery API server.
type Server struct {
	generic *genericapiserver.GenericAPIServer
}

// New builds the server; Run starts it.
func New(opts Options, log Log) (*Server, error) {
	host, portText, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("delivery API address %q: %w", opts.Addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("delivery API address %q: bad port: %w", opts.Addr, err)
	}
	serving := genericoptions.NewSecureServingOptions().WithLoopback()
	serving.BindPort = port
	if host != "" {
		serving.BindAddress = net.ParseIP(host)
		if serving.BindAddress == nil {
			return nil, fmt.Errorf("delivery API address %q: the host must be an IP address", opts.Addr)
		}
	}
	serving.ServerCert.CertKey.CertFile, serving.ServerCert.CertKey.KeyFile = opts.CertFile, opts.KeyFile
	serving.ServerCert.CertDirectory = opts.CertDir
	serving.ServerCert.PairName = "delivery-api"
	if opts.CertFile == "" {
		if err := serving.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
			return nil, fmt.Errorf("delivery API: self-signed certificate: %w", err)
		}
	}
	authn := genericoptions.NewDelegatingAuthenticationOptions()
	authn.RemoteKubeConfigFile = opts.Kubeconfig
	authz := genericoptions.NewDelegatingAuthorizationOptions()
	authz.RemoteKubeConfigFile = opts.Kubeconfig

	cfg := genericapiserver.NewConfig(Codecs)
	if err := serving.ApplyTo(&cfg.SecureServing, &cfg.LoopbackClientConfig); err != nil {
		return nil, fmt.Errorf("delivery API: serving: %w", err)
	}
	if err := authn.ApplyTo(&cfg.Authentication, cfg.SecureServing, nil); err != nil {
		return nil, fmt.Errorf("delivery API: delegated authentication: %w", err)
	}
	if err := authz.ApplyTo(&cfg.Authorization); err != nil {
		return nil, fmt.Errorf("delivery API: delegated authorization: %w", err)
	}
	cfg.EffectiveVersion = utilcompatibility.DefaultBuildEffectiveVersion()
	// OpenAPI for `kubectl explain` and for the server-side apply type
	// converter the generic server builds for every resource.
	namer := openapinamer.NewDefinitionNamer(Scheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIConfig.Info.Title, cfg.OpenAPIConfig.Info.Version = "Herald delivery log", deliveryv1.SchemeGroupVersion.Version
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIV3Config.Info.Title, cfg.OpenAPIV3Config.Info.Version = "Herald delivery log", deliveryv1.SchemeGroupVersion.Version
	// The dispatcher exports its own metrics; the generic server's
	// would land in a second registry nobody scrapes.
	cfg.EnableMetrics = false
	cfg.EnableProfiling = false

	generic, err := cfg.Complete(nil).New("herald-delivery-api", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, fmt.Errorf("delivery API: %w", err)
	}
	group := genericapiserver.NewDefaultAPIGroupInfo(deliveryv1.GroupName, Scheme, metav1.ParameterCodec, Codecs)
	group.VersionedResourcesStorageMap[deliveryv1.SchemeGroupVersion.Version] = map[string]rest.Storage{
		"deliveries": &storage{log: log},
	}
	if err := generic.InstallAPIGroup(&group); err != nil {
		return nil, fmt.Errorf("delivery API: install %s: %w", deliveryv1.GroupName, err)
	}
	return &Server{generic: generic}, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	return s.generic.PrepareRun().RunWithContext(ctx)
}
