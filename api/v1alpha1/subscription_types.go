package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SubscriptionSpec selects events for an endpoint. An event matches when its
// type matches one of types, its source matches one of sources (when set),
// and the filter (when set) evaluates to true.
type SubscriptionSpec struct {
	// EndpointRef names the WebhookEndpoint in this namespace that receives
	// matching events.
	// +required
	EndpointRef LocalObjectReference `json:"endpointRef"`

	// Types are CloudEvents type patterns: an exact type ("order.created"),
	// a prefix ending in ".*" ("order.*" matches "order.created" and
	// "order.item.added"), or "*" for every type.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:items:Pattern=`^(\*|[^*\s]+(\.\*)?)$`
	Types []string `json:"types"`

	// Sources are optional CloudEvents source patterns, with the same syntax
	// as types but "/*" as the prefix wildcard ("/orders/*"), or "*".
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=1024
	// +kubebuilder:validation:items:Pattern=`^(\*|[^*\s]+(/\*)?)$`
	Sources []string `json:"sources,omitempty"`

	// Filter is an optional CEL expression that must evaluate to a bool. It
	// sees "event" (type, source, subject, id, time, datacontenttype and
	// extensions as strings) and "data" (the JSON event data), for example
	// `event.subject.startsWith("eu/") && data.total > 100`.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Filter string `json:"filter,omitempty"`

	// Suspend stops matching new events for this Subscription.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// SubscriptionStatus is the observed state of a Subscription.
type SubscriptionStatus struct {
	// ObservedGeneration is the generation the manager last fully processed.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Reconciling and Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// Matched counts events this Subscription matched (written by the
	// dispatcher).
	// +optional
	Matched int64 `json:"matched,omitempty"`

	// Delivered counts matched events delivered to the endpoint (written by
	// the dispatcher).
	// +optional
	Delivered int64 `json:"delivered,omitempty"`

	// LastMatchedTime is when an event last matched (written by the
	// dispatcher).
	// +optional
	LastMatchedTime *metav1.Time `json:"lastMatchedTime,omitempty"`
}

// Subscription routes events to a WebhookEndpoint.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whsub,categories=webhooks
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpointRef.name`
// +kubebuilder:printcolumn:name="Types",type=string,JSONPath=`.spec.types`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Matched",type=integer,JSONPath=`.status.matched`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Subscription struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec SubscriptionSpec `json:"spec"`
	// +optional
	Status SubscriptionStatus `json:"status,omitempty"`
}

// SubscriptionList contains a list of Subscription.
// +kubebuilder:object:root=true
type SubscriptionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Subscription `json:"items"`
}
