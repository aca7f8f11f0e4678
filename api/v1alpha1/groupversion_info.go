// Package v1alpha1 contains the herald.dev/v1alpha1 API: WebhookEndpoint
// (where and how to deliver) and Subscription (which events go there), and
// the condition types, reasons, labels and annotations the manager and the
// dispatcher share.
// +kubebuilder:object:generate=true
// +groupName=herald.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is group version used to register these objects.
	GroupVersion = schema.GroupVersion{Group: "herald.dev", Version: "v1alpha1"}

	// SchemeBuilder is used to add go types to the GroupVersionKind scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
