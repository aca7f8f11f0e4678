// Package v1alpha1 contains the delivery.herald.dev/v1alpha1 API: the
// delivery log. It is not a CustomResourceDefinition: the dispatcher serves
// it through the Kubernetes API aggregation layer, read-only, from the log
// it keeps in JetStream, so that kubectl, RBAC and audit logging work with
// deliveries unchanged.
// +kubebuilder:skip
// +kubebuilder:object:generate=true
// +k8s:openapi-gen=true
// +groupName=delivery.herald.dev
package v1alpha1
