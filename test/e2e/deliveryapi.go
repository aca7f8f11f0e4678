package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// dispatcherService is the name of the dispatcher's Service, which the
// delivery APIService points at.
const dispatcherService = "herald-dispatcher"

// deliveryAPI is the delivery API of a local dispatcher: its serving
// certificate and port.
type deliveryAPI struct {
	port              int
	certFile, keyFile string
	caPEM             []byte
}

// newDeliveryAPI makes the serving certificate of a local dispatcher's
// delivery API, valid for the name the aggregator checks
// (<service>.<namespace>.svc) and for loopback.
func newDeliveryAPI(dir string) (*deliveryAPI, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "delivery-api")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	ca, err := newTestCA("herald-delivery-api-ca")
	if err != nil {
		return nil, err
	}
	svc := dispatcherService + "." + heraldv1.DefaultNamespace + ".svc"
	certFile, keyFile, err := ca.issue(certDir, "serving", svc, []string{svc, "localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		return nil, err
	}
	return &deliveryAPI{port: port, certFile: certFile, keyFile: keyFile, caPEM: ca.PEM}, nil
}

func (a *deliveryAPI) dispatcherArgs() []string {
	return []string{
		"--delivery-api-addr=127.0.0.1:" + strconv.Itoa(a.port),
		"--delivery-api-tls-cert-file=" + a.certFile,
		"--delivery-api-tls-key-file=" + a.keyFile,
	}
}

// register makes the kube-apiserver's aggregator serve
// delivery.herald.dev from the local dispatcher: an ExternalName Service
// named like the in-cluster one, pointing at localhost (the aggregator
// dials an ExternalName Service's name when aggregator routing is off, the
// default), and the APIService with the serving certificate's CA.
func (a *deliveryAPI) register(ctx context.Context, e *Env) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: dispatcherService, Namespace: heraldv1.DefaultNamespace},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "localhost",
			Ports:        []corev1.ServicePort{{Name: "delivery-api", Port: int32(a.port)}},
		},
	}
	if err := e.Client.Create(ctx, svc); err != nil {
		return fmt.Errorf("create the dispatcher's ExternalName Service: %w", err)
	}
	port := int32(a.port)
	apiService := &apiregistrationv1.APIService{
		ObjectMeta: metav1.ObjectMeta{Name: deliveryv1.SchemeGroupVersion.Version + "." + deliveryv1.GroupName},
		Spec: apiregistrationv1.APIServiceSpec{
			Group:                deliveryv1.GroupName,
			Version:              deliveryv1.SchemeGroupVersion.Version,
			Service:              &apiregistrationv1.ServiceReference{Namespace: heraldv1.DefaultNamespace, Name: dispatcherService, Port: &port},
			CABundle:             a.caPEM,
			GroupPriorityMinimum: 1000,
			VersionPriority:      15,
		},
	}
	if err := e.Client.Create(ctx, apiService); err != nil {
		return fmt.Errorf("create the delivery APIService: %w", err)
	}
	return nil
}

// waitAvailable waits until the aggregator reports the delivery API
// available: it reached the dispatcher and the dispatcher answered.
func (a *deliveryAPI) waitAvailable(ctx context.Context, e *Env) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	name := types.NamespacedName{Name: deliveryv1.SchemeGroupVersion.Version + "." + deliveryv1.GroupName}
	var last string
	for {
		s := &apiregistrationv1.APIService{}
		if err := e.Client.Get(ctx, name, s); err == nil {
			for _, c := range s.Status.Conditions {
				if c.Type == apiregistrationv1.Available {
					if c.Status == apiregistrationv1.ConditionTrue {
						return nil
					}
					last = c.Reason + ": " + c.Message
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the delivery APIService is not available: %s", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
