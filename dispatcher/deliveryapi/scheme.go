package deliveryapi

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

var (
	// Scheme holds the types the delivery API serves.
	Scheme = runtime.NewScheme()
	// Codecs encode and decode them.
	Codecs = serializer.NewCodecFactory(Scheme)
)

func init() {
	if err := deliveryv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	// The API has one version and no internal representation of its own:
	// the served version's types double as the internal version, so the
	// server never converts (an object already of the requested version is
	// only copied).
	internal := schema.GroupVersion{Group: deliveryv1.GroupName, Version: runtime.APIVersionInternal}
	Scheme.AddKnownTypes(internal, &deliveryv1.Delivery{}, &deliveryv1.DeliveryList{})
	if err := Scheme.AddFieldLabelConversionFunc(deliveryv1.SchemeGroupVersion.WithKind("Delivery"), fieldLabel); err != nil {
		panic(err)
	}
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	Scheme.AddUnversionedTypes(schema.GroupVersion{Version: "v1"},
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
}

// fieldLabel accepts the fields a Delivery list can be selected on.
func fieldLabel(label, value string) (string, string, error) {
	switch label {
	case "metadata.name", "metadata.namespace", deliveryv1.FieldPhase:
		return label, value, nil
	}
	return "", "", fmt.Errorf("field label %q is not supported for deliveries: use metadata.name, metadata.namespace or %s", label, deliveryv1.FieldPhase)
}
