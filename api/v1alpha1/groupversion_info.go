// Package v1alpha1 contains the herald.dev/v1alpha1 API: WebhookEndpoint
// (where and how to deliver) and Subscription (which events go there), and
// the condition types, reasons, labels and annotations the manager and the
// dispatcher share.
// +kubebuilder:object:generate=true
// +groupName=herald.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is group version used to register these objects.
	GroupVersion = schema.GroupVersion{Group: "herald.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this group-version. It uses
	// apimachinery only, so importing the API drags in no controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&WebhookEndpoint{}, &WebhookEndpointList{},
		&Subscription{}, &SubscriptionList{},
		&Redelivery{}, &RedeliveryList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
