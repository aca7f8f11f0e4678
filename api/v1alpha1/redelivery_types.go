package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RedeliveryPhase selects deliveries by how they ended. Deliveries still
// Pending or Retrying are in the queue already and are never requeued.
// +kubebuilder:validation:Enum=DeadLettered;Succeeded
type RedeliveryPhase string

const (
	// RedeliverDeadLettered selects deliveries given up and kept in the
	// endpoint's dead-letter queue. They leave it when requeued.
	RedeliverDeadLettered RedeliveryPhase = "DeadLettered"
	// RedeliverSucceeded selects deliveries the receiver acknowledged, as
	// the delivery log still holds them (a receiver that lost data).
	RedeliverSucceeded RedeliveryPhase = "Succeeded"
)

// MaxRedeliveryDeliveries bounds spec.deliveries.
const MaxRedeliveryDeliveries = 1000

// RedeliverySpec selects deliveries of one endpoint to queue again. A
// delivery is selected when its phase is one of phases, its event was
// ingested within [since, until), its event type matches one of types (when
// set) and it is named in deliveries (when set).
// +kubebuilder:validation:XValidation:rule="!has(self.since) || !has(self.until) || self.since < self.until",message="spec.since must be before spec.until"
// +kubebuilder:validation:XValidation:rule="!has(self.deliveries) || self.deliveries.all(d, !d.contains('.') || d.substring(d.indexOf('.') + 1) == self.endpointRef.name)",message="spec.deliveries names deliveries of spec.endpointRef: a webhook-id, or a Delivery name <webhook-id>.<endpoint> of that endpoint"
type RedeliverySpec struct {
	// EndpointRef names the WebhookEndpoint, in this namespace, whose
	// deliveries are queued again.
	// +required
	EndpointRef LocalObjectReference `json:"endpointRef"`

	// Phases selects deliveries by how they ended: DeadLettered (the
	// default) and Succeeded.
	// +optional
	// +listType=set
	// +kubebuilder:default={DeadLettered}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=2
	Phases []RedeliveryPhase `json:"phases,omitempty"`

	// Since selects deliveries of events ingested at or after this time.
	// +optional
	Since *metav1.Time `json:"since,omitempty"`

	// Until selects deliveries of events ingested before this time.
	// +optional
	Until *metav1.Time `json:"until,omitempty"`

	// Types are CloudEvents type patterns, as in a Subscription: an exact
	// type ("order.created"), a prefix ending in ".*" ("order.*"), or "*".
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:items:Pattern=`^(\*|[^*\s]+(\.\*)?)$`
	Types []string `json:"types,omitempty"`

	// Deliveries names the deliveries to requeue: webhook-ids
	// ("msg_…") or Delivery names ("msg_….<endpoint>", as
	// `kubectl get deliveries` lists them). Unset selects every delivery
	// the other fields select.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=320
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9_-]+(\.[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$`
	Deliveries []string `json:"deliveries,omitempty"`
}

// GetPhases returns spec.phases, defaulted to DeadLettered.
func (s *RedeliverySpec) GetPhases() []RedeliveryPhase {
	if len(s.Phases) == 0 {
		return []RedeliveryPhase{RedeliverDeadLettered}
	}
	return s.Phases
}

// RedeliveryStatus is the progress of a Redelivery.
type RedeliveryStatus struct {
	// ObservedGeneration is the generation the dispatcher processed.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready (True once every matching delivery was queued
	// again), Reconciling while it runs, Stalled when it cannot run.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// Matched is the number of deliveries the spec selected when the
	// Redelivery started.
	// +optional
	Matched int64 `json:"matched,omitempty"`

	// Requeued is the number of deliveries queued again so far.
	// +optional
	Requeued int64 `json:"requeued,omitempty"`

	// StartTime is when the dispatcher started queueing.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// CompletionTime is when the last matching delivery was queued. A
	// completed Redelivery never runs again.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
}

// Redelivery queues deliveries of one WebhookEndpoint again, once: each
// selected delivery goes back into the endpoint's queue with its
// webhook-id, a fresh attempt budget and retry.maxAge counted from the
// requeue. It is executed by the dispatcher and never runs twice; its
// spec cannot change.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whrd,categories=webhooks
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpointRef.name`
// +kubebuilder:printcolumn:name="Matched",type=integer,JSONPath=`.status.matched`
// +kubebuilder:printcolumn:name="Requeued",type=integer,JSONPath=`.status.requeued`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Phases",type=string,JSONPath=`.spec.phases`,priority=1
// +kubebuilder:printcolumn:name="Completed",type=date,JSONPath=`.status.completionTime`,priority=1
type Redelivery struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable: a Redelivery runs once; create a new one"
	Spec RedeliverySpec `json:"spec"`
	// +optional
	Status RedeliveryStatus `json:"status,omitempty"`
}

// RedeliveryList contains a list of Redelivery.
// +kubebuilder:object:root=true
type RedeliveryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Redelivery `json:"items"`
}
