package main

import (
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
)

// listError says what to do when reading resources failed.
func listError(what string, err error) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("you may not read %s here: %w (ask for the herald-viewer role, which aggregates to view)", what, err)
	case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
		return fmt.Errorf("the cluster does not serve %s: %w (is Herald installed? kubectl apply -k config/default)", what, err)
	}
	return fmt.Errorf("read %s: %w", what, err)
}

// endpointError says what to do when an endpoint cannot be read.
func endpointError(namespace, name string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("WebhookEndpoint %q not found in namespace %s (list them with kubectl herald status -n %s, or pass -n)", name, namespace, namespace)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("you may not read WebhookEndpoint %s/%s: %w", namespace, name, err)
	}
	return fmt.Errorf("read WebhookEndpoint %s/%s: %w", namespace, name, err)
}
