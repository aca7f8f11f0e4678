// Package catalog is the dispatcher's view of the cluster: the last known
// good configuration of every WebhookEndpoint and Subscription, and each
// endpoint's managed Secret. It is fed by informers (Secrets
// label-selected) and read by the router and delivery stages.
//
// The rule for an object whose spec changes: its configuration of the last
// generation the manager declared Ready stays in use until a newer
// generation is Ready (it then replaces it), the object is deleted, or its
// current generation is definitively invalid (Stalled); an object never
// Ready is not used. So an event routed while an edit is being reconciled
// matches the old spec or the new one, never neither. While any object of a
// namespace is in that window, the namespace is in transition
// (InTransition) and the router holds events that match nothing instead of
// discarding them.
package catalog

import (
	"k8s.io/apimachinery/pkg/types"

	"github.com/herald-dev/herald/api/filter"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Endpoint is a Ready WebhookEndpoint with the material of its managed
// Secret. Values are immutable snapshots: a change replaces the whole value.
type Endpoint struct {
	Namespace string
	Name      string
	// UID tells an endpoint from a deleted one of the same name.
	UID        types.UID
	Generation int64
	// Spec is a deep copy of the endpoint's spec.
	Spec heraldv1.WebhookEndpointSpec
	// Keys are the signing keys valid now (current first is not guaranteed;
	// expired ones are already removed).
	Keys []heraldv1.SigningKey
	// SecretHeaders are header values taken from Secrets (spec.headers with
	// valueFrom); literal values are in Spec.Headers.
	SecretHeaders map[string]string
	// CABundle, ClientCert and ClientKey are PEM; nil when not configured.
	CABundle   []byte
	ClientCert []byte
	ClientKey  []byte
	// Gone is true when the receiver answered 410 Gone for this generation.
	Gone bool

	// allKeys includes expired keys not yet pruned by the manager; the
	// catalog rebuilds the snapshot when the next one expires.
	allKeys []heraldv1.SigningKey
	// key is Key(Namespace, Name), the string the catalog's map holds,
	// kept so that the stages, which look endpoints up by key on every
	// catalog change and every scrape, do not build it each time.
	key string
}

// Key returns "namespace/name".
func (e *Endpoint) Key() string {
	if e.key != "" {
		return e.key
	}
	return Key(e.Namespace, e.Name)
}

// Key is the "namespace/name" key the catalog and the delivery stage know
// an object by.
func Key(namespace, name string) string { return namespace + "/" + name }

// Subscription is a Ready, unsuspended Subscription.
type Subscription struct {
	Namespace  string
	Name       string
	UID        types.UID
	Generation int64
	// Endpoint is the name of the WebhookEndpoint in Namespace.
	Endpoint string
	Types    []string
	Sources  []string
	// Filter is nil when spec.filter is empty.
	Filter *filter.Filter
}
