package controllers

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// networkPolicyConfig enables the egress NetworkPolicy with an allowlist,
// the API server's addresses and publicly routable cluster ranges.
func networkPolicyConfig() DispatcherConfig {
	cfg := DefaultDispatcherConfig()
	cfg.NetworkPolicy = true
	cfg.AllowedCIDRs = []string{"10.20.0.0/16", "fd00:20::/64"}
	cfg.NetworkPolicyCIDRs = []string{"10.96.0.1/32", "172.18.0.2/32"}
	cfg.ClusterCIDRs = []string{"203.0.113.0/24", "2001:db8:42::/56"}
	return cfg
}

func TestDispatcherNetworkPolicy(t *testing.T) {
	cfg := networkPolicyConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	np := DispatcherNetworkPolicy(cfg)

	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}) {
		t.Errorf("policy types %v: the policy restricts egress only", np.Spec.PolicyTypes)
	}
	if !maps.Equal(np.Spec.PodSelector.MatchLabels, DispatcherDeployment(cfg).Spec.Selector.MatchLabels) {
		t.Errorf("pod selector %v does not select the dispatcher's pods", np.Spec.PodSelector.MatchLabels)
	}
	if len(np.Spec.Egress) != 3 {
		t.Fatalf("want 3 egress rules (DNS, public, exceptions), got %+v", np.Spec.Egress)
	}

	dns := np.Spec.Egress[0]
	if len(dns.To) != 0 || len(dns.Ports) != 2 || dns.Ports[0].Port.IntValue() != 53 || dns.Ports[1].Port.IntValue() != 53 ||
		*dns.Ports[0].Protocol != corev1.ProtocolUDP || *dns.Ports[1].Protocol != corev1.ProtocolTCP {
		t.Errorf("DNS rule %+v, want port 53 UDP and TCP to anywhere", dns)
	}

	public := np.Spec.Egress[1]
	if len(public.Ports) != 0 || len(public.To) != 2 {
		t.Fatalf("public rule %+v", public)
	}
	v4, v6 := public.To[0].IPBlock, public.To[1].IPBlock
	if v4 == nil || v4.CIDR != "0.0.0.0/0" || v6 == nil || v6.CIDR != "::/0" {
		t.Fatalf("public rule peers %+v", public.To)
	}
	wantV4 := []string{"10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "203.0.113.0/24"}
	wantV6 := []string{"fc00::/7", "fe80::/10", "2001:db8:42::/56"}
	if !slices.Equal(v4.Except, wantV4) {
		t.Errorf("IPv4 except %v, want %v", v4.Except, wantV4)
	}
	if !slices.Equal(v6.Except, wantV6) {
		t.Errorf("IPv6 except %v, want %v", v6.Except, wantV6)
	}

	var exceptions []string
	for _, peer := range np.Spec.Egress[2].To {
		if peer.IPBlock == nil || len(peer.IPBlock.Except) > 0 {
			t.Errorf("exception peer %+v", peer)
			continue
		}
		exceptions = append(exceptions, peer.IPBlock.CIDR)
	}
	wantExceptions := []string{"10.20.0.0/16", "fd00:20::/64", "10.96.0.1/32", "172.18.0.2/32"}
	if !slices.Equal(exceptions, wantExceptions) || len(np.Spec.Egress[2].Ports) != 0 {
		t.Errorf("exceptions %v, want %v on every port", exceptions, wantExceptions)
	}
}

func TestDispatcherNetworkPolicyFlags(t *testing.T) {
	cfg := networkPolicyConfig()
	if !slices.ContainsFunc(DispatcherObjects(cfg), func(o client.Object) bool { _, ok := o.(*networkingv1.NetworkPolicy); return ok }) {
		t.Error("--dispatcher-network-policy: the manager does not apply the NetworkPolicy")
	}
	off := cfg
	off.NetworkPolicy = false
	if slices.ContainsFunc(DispatcherObjects(off), func(o client.Object) bool { _, ok := o.(*networkingv1.NetworkPolicy); return ok }) {
		t.Error("without --dispatcher-network-policy the manager applies a NetworkPolicy")
	}
	// The policy is its own object: changing it does not roll the pods.
	if off.Hash() != cfg.Hash() {
		t.Error("the NetworkPolicy settings change the pod template's config hash")
	}
	// The cluster's ranges reach the dispatcher's SSRF guard.
	if args := dispatcherArgs(cfg); !slices.Contains(args, "--cluster-cidrs=203.0.113.0/24,2001:db8:42::/56") {
		t.Errorf("dispatcher args %v lack --cluster-cidrs", args)
	}

	noAPIServer := cfg
	noAPIServer.NetworkPolicyCIDRs = nil
	if err := noAPIServer.Validate(); err == nil || !strings.Contains(err.Error(), "--dispatcher-network-policy-cidrs") {
		t.Errorf("want an error naming --dispatcher-network-policy-cidrs, got %v", err)
	}
	bad := cfg
	bad.ClusterCIDRs = []string{"pods"}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), `--dispatcher-cluster-cidrs: "pods" is not a CIDR`) {
		t.Errorf("want an error naming --dispatcher-cluster-cidrs, got %v", err)
	}
}

// TestDispatcherNetworkPolicyAcceptedByAPIServer has the real API server
// validate the rendered policy (server-side dry run) and checks that the except blocks come back as rendered.
func TestDispatcherNetworkPolicyAcceptedByAPIServer(t *testing.T) {
	ctx := context.Background()
	cfg := networkPolicyConfig()
	cfg.Namespace = newNamespace(t)
	want := DispatcherNetworkPolicy(cfg)
	got := want.DeepCopy()
	if err := k8sClient.Create(ctx, got, client.DryRunAll); err != nil {
		t.Fatalf("the API server refuses the NetworkPolicy: %v", err)
	}
	if len(got.Spec.Egress) != len(want.Spec.Egress) ||
		!slices.Equal(got.Spec.Egress[1].To[0].IPBlock.Except, want.Spec.Egress[1].To[0].IPBlock.Except) ||
		!slices.Equal(got.Spec.Egress[1].To[1].IPBlock.Except, want.Spec.Egress[1].To[1].IPBlock.Except) {
		t.Errorf("dry run returned %+v, want %+v", got.Spec.Egress, want.Spec.Egress)
	}
	// A dry run stores nothing.
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(want), &networkingv1.NetworkPolicy{}); err == nil {
		t.Error("the dry run created the NetworkPolicy")
	}
}
