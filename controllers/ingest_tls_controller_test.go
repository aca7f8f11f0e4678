package controllers

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/pki"
)

// getTLSSecret reads a Secret and parses its certificate, which must verify
// against the Secret's own ca.crt for every name in hosts.
func getTLSSecret(t *testing.T, g Gomega, ns, name string, hosts []string, at time.Time) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, s)).To(Succeed())
	g.Expect(s.Type).To(Equal(corev1.SecretTypeTLS))
	cert, _, err := pki.ParseKeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	g.Expect(err).NotTo(HaveOccurred())
	roots := x509.NewCertPool()
	g.Expect(roots.AppendCertsFromPEM(s.Data[pki.CABundleKey])).To(BeTrue(), "ca.crt holds PEM certificates")
	for _, host := range hosts {
		_, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		g.Expect(err).NotTo(HaveOccurred(), "%s verifies for %s with its ca.crt", name, host)
	}
	return s, cert
}

// TestIngestCertificateIssuedRenewedAndRotated drives the certificate
// reconciler with an injected clock: the CA and the serving certificate
// are created for the dispatcher Service's names, left alone until due,
// renewed at two thirds of their lifetime, repaired when broken, and a CA
// rotation keeps the previous CA trusted while a certificate it signed is
// still served.
func TestIngestCertificateIssuedRenewedAndRotated(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	cfg := DefaultDispatcherConfig()
	cfg.Namespace = ns
	cfg.TLSExtraHosts = []string{"127.0.0.1", "ingest.example.com"}
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakePassiveClock(t0)
	r := &IngestCertificateReconciler{Client: k8sClient, APIReader: k8sClient, Config: cfg, Clock: clock}
	reconcileAt := func(now time.Time) ctrl.Result {
		t.Helper()
		clock.SetTime(now)
		res, err := r.Reconcile(ctx, r.request())
		g.Expect(err).NotTo(HaveOccurred())
		return res
	}
	hosts := []string{"herald-dispatcher", "herald-dispatcher." + ns, "herald-dispatcher." + ns + ".svc",
		"herald-dispatcher." + ns + ".svc.cluster.local", "127.0.0.1", "ingest.example.com"}
	leaf := func(at time.Time) (*corev1.Secret, *x509.Certificate) {
		return getTLSSecret(t, g, ns, heraldv1.IngestTLSSecretName, hosts, at)
	}
	caOf := func() *corev1.Secret {
		s := &corev1.Secret{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: heraldv1.CASecretName}, s)).To(Succeed())
		return s
	}

	// Created. Nothing is due for months: the reconciler checks again after
	// its 12-hour cap.
	g.Expect(reconcileAt(t0).RequeueAfter).To(Equal(maxCertificateRecheck))
	secret, cert := leaf(t0)
	ca := caOf()
	g.Expect(ca.Labels).To(HaveKeyWithValue(heraldv1.ManagedByLabel, heraldv1.ManagedByValue))
	g.Expect(secret.Data[pki.CABundleKey]).To(Equal(ca.Data[pki.CABundleKey]))
	caCert := pki.ParseCertificates(ca.Data[corev1.TLSCertKey])[0]
	g.Expect(caCert.IsCA).To(BeTrue())
	g.Expect(caCert.NotAfter.Sub(t0)).To(BeNumerically(">=", 9*365*24*time.Hour), "the CA lives about 10 years")
	g.Expect(cert.NotAfter.Sub(t0)).To(BeNumerically("~", 365*24*time.Hour, time.Hour), "the leaf lives a year")

	// Not due: nothing is written; one minute before the renewal the
	// reconciler asks to come back then.
	renewAt := pki.RenewAt(cert)
	g.Expect(reconcileAt(renewAt.Add(-time.Minute)).RequeueAfter).To(Equal(time.Minute))
	unchanged, _ := leaf(renewAt.Add(-time.Minute))
	g.Expect(unchanged.ResourceVersion).To(Equal(secret.ResourceVersion))

	// Due: a new leaf from the same CA.
	reconcileAt(renewAt.Add(time.Minute))
	_, renewed := leaf(renewAt.Add(time.Minute))
	g.Expect(renewed.SerialNumber).NotTo(Equal(cert.SerialNumber))
	g.Expect(renewed.NotBefore).To(BeTemporally(">", cert.NotBefore))
	g.Expect(caOf().Data).To(Equal(ca.Data), "the CA is not due")

	// Broken by an edit, then deleted: repaired each time.
	now := renewAt.Add(time.Hour)
	broken := &corev1.Secret{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: heraldv1.IngestTLSSecretName}, broken)).To(Succeed())
	broken.Data[corev1.TLSPrivateKeyKey] = caOf().Data[corev1.TLSPrivateKeyKey] // a key that does not match
	g.Expect(k8sClient.Update(ctx, broken)).To(Succeed())
	reconcileAt(now)
	leaf(now)
	g.Expect(k8sClient.Delete(ctx, broken)).To(Succeed())
	reconcileAt(now)
	_, cert = leaf(now)

	// CA rotation. Shortly before the CA is due the leaf is renewed, by
	// the old CA; once the CA is due a new one signs from then on, the old
	// one stays in ca.crt, and the leaf it signed is served on.
	caRenewAt := pki.RenewAt(caCert)
	reconcileAt(caRenewAt.Add(-24 * time.Hour))
	_, lastOfOldCA := leaf(caRenewAt.Add(-24 * time.Hour))
	g.Expect(lastOfOldCA.SerialNumber).NotTo(Equal(cert.SerialNumber))
	g.Expect(lastOfOldCA.NotAfter).To(BeTemporally("<=", caCert.NotAfter), "a leaf never outlives its CA")

	reconcileAt(caRenewAt.Add(time.Minute))
	rotated := caOf()
	bundle := pki.ParseCertificates(rotated.Data[pki.CABundleKey])
	g.Expect(bundle).To(HaveLen(2), "new CA first, previous CA until it expires")
	g.Expect(bundle[0].Equal(caCert)).To(BeFalse())
	g.Expect(bundle[1].Equal(caCert)).To(BeTrue())
	_, kept := leaf(caRenewAt.Add(time.Minute))
	g.Expect(kept.SerialNumber).To(Equal(lastOfOldCA.SerialNumber), "the leaf is not due, and its CA is still trusted")

	// The leaf's next renewal is signed by the new CA.
	next := pki.RenewAt(kept).Add(time.Minute)
	reconcileAt(next)
	_, fromNewCA := leaf(next)
	g.Expect(fromNewCA.CheckSignatureFrom(bundle[0])).To(Succeed())
}

// TestIngestCertificateDeletedSecretsRecreated: the manager recreates the
// CA and ingest Secrets when they are deleted (a watch, not a timer).
func TestIngestCertificateDeletedSecretsRecreated(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	for _, name := range []string{heraldv1.IngestTLSSecretName, heraldv1.CASecretName} {
		key := client.ObjectKey{Namespace: testDispCfg.Namespace, Name: name}
		old := &corev1.Secret{}
		g.Eventually(func() error { return k8sClient.Get(ctx, key, old) }, waitTimeout, pollEvery).Should(Succeed())
		g.Expect(k8sClient.Delete(ctx, old)).To(Succeed())
		g.Eventually(func(g Gomega) {
			s := &corev1.Secret{}
			g.Expect(k8sClient.Get(ctx, key, s)).To(Succeed())
			g.Expect(s.UID).NotTo(Equal(old.UID))
		}, waitTimeout, pollEvery).Should(Succeed(), "Secret %s recreated", name)
	}
	getTLSSecret(t, g, testDispCfg.Namespace, heraldv1.IngestTLSSecretName, IngestServingHosts(testDispCfg), time.Now())
}

// TestCABundlePublishedToNamespacesWithHeraldObjects: herald-ca appears in
// a namespace once it holds a WebhookEndpoint or a Subscription, carries
// the CA Secret's bundle, and is repaired after an edit or a deletion.
func TestCABundlePublishedToNamespacesWithHeraldObjects(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	caBundle := func(g Gomega) string {
		ca := &corev1.Secret{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: testDispCfg.Namespace, Name: heraldv1.CASecretName}, ca)).To(Succeed())
		g.Expect(ca.Data[pki.CABundleKey]).NotTo(BeEmpty())
		return string(ca.Data[pki.CABundleKey])
	}
	published := func(ns string) {
		t.Helper()
		g.Eventually(func(g Gomega) {
			cm := &corev1.ConfigMap{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: heraldv1.CABundleConfigMapName}, cm)).To(Succeed())
			g.Expect(cm.Data).To(Equal(map[string]string{"ca.crt": caBundle(g)}))
			g.Expect(cm.Labels).To(HaveKeyWithValue(heraldv1.ManagedByLabel, heraldv1.ManagedByValue))
		}, waitTimeout, pollEvery).Should(Succeed(), "herald-ca in %s", ns)
	}

	withEndpoint := newNamespace(t)
	withSubscription := newNamespace(t)
	without := newNamespace(t)
	g.Expect(k8sClient.Create(ctx, endpoint(withEndpoint, "orders"))).To(Succeed())
	g.Expect(k8sClient.Create(ctx, subscription(withSubscription, "orders", "missing"))).To(Succeed())
	published(withEndpoint)
	published(withSubscription)
	err := k8sClient.Get(ctx, client.ObjectKey{Namespace: without, Name: heraldv1.CABundleConfigMapName}, &corev1.ConfigMap{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "no herald-ca where there is no Herald object: %v", err)

	key := client.ObjectKey{Namespace: withEndpoint, Name: heraldv1.CABundleConfigMapName}
	cm := &corev1.ConfigMap{}
	g.Expect(k8sClient.Get(ctx, key, cm)).To(Succeed())
	cm.Data["ca.crt"] = "-----BEGIN CERTIFICATE-----\nnot the CA\n-----END CERTIFICATE-----\n"
	g.Expect(k8sClient.Update(ctx, cm)).To(Succeed())
	published(withEndpoint)

	g.Expect(k8sClient.Delete(ctx, cm)).To(Succeed())
	published(withEndpoint)
}

// TestDeliveryAPIServiceRegistered: the APIService of the delivery API
// points at the dispatcher Service's port 443 and trusts the manager's CA,
// so the aggregator verifies the dispatcher's certificate; an edit is
// undone on the next reconcile.
func TestDeliveryAPIServiceRegistered(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	cfg := DefaultDispatcherConfig()
	cfg.Namespace = ns
	certs := &IngestCertificateReconciler{Client: k8sClient, APIReader: k8sClient, Config: cfg}
	_, err := certs.Reconcile(ctx, certs.request())
	g.Expect(err).NotTo(HaveOccurred())
	r := &DeliveryAPIReconciler{Bundle: &CABundleReconciler{Client: k8sClient, APIReader: k8sClient, Config: cfg}, Client: k8sClient, Config: cfg}
	res, err := r.Reconcile(ctx, r.request())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(deliveryAPIRecheck))
	t.Cleanup(func() {
		_ = k8sClient.Delete(ctx, &apiregistrationv1.APIService{ObjectMeta: metav1.ObjectMeta{Name: DeliveryAPIServiceName}})
	})

	ca := &corev1.Secret{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: heraldv1.CASecretName}, ca)).To(Succeed())
	check := func() {
		got := &apiregistrationv1.APIService{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "v1alpha1.delivery.herald.dev"}, got)).To(Succeed())
		g.Expect(got.Spec.Group).To(Equal("delivery.herald.dev"))
		g.Expect(got.Spec.Version).To(Equal("v1alpha1"))
		g.Expect(got.Spec.Service).NotTo(BeNil())
		g.Expect(got.Spec.Service.Namespace).To(Equal(ns))
		g.Expect(got.Spec.Service.Name).To(Equal(heraldv1.DispatcherName))
		g.Expect(*got.Spec.Service.Port).To(BeEquivalentTo(443))
		g.Expect(string(got.Spec.CABundle)).To(Equal(string(ca.Data[pki.CABundleKey])))
	}
	check()

	// A user's edit, retried as kubectl edit would be: kube-apiserver's
	// availability controller writes the APIService's status meanwhile.
	otherPort := int32(8443)
	g.Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		edited := &apiregistrationv1.APIService{}
		if err := k8sClient.Get(ctx, client.ObjectKey{Name: DeliveryAPIServiceName}, edited); err != nil {
			return err
		}
		edited.Spec.Service.Port = &otherPort
		edited.Spec.CABundle = []byte("not the CA")
		return k8sClient.Update(ctx, edited)
	})).To(Succeed())
	_, err = r.Reconcile(ctx, r.request())
	g.Expect(err).NotTo(HaveOccurred())
	check()

	// The Service and the Deployment carry the port the APIService uses.
	svc := DispatcherService(cfg)
	g.Expect(svc.Spec.Ports).To(ContainElement(HaveField("Name", "delivery-api")))
	dep := DispatcherDeployment(cfg)
	args := dep.Spec.Template.Spec.Containers[0].Args
	g.Expect(args).To(ContainElements("--delivery-api-addr=:8444",
		"--delivery-api-tls-cert-file=/etc/herald/ingest-tls/tls.crt", "--delivery-api-tls-key-file=/etc/herald/ingest-tls/tls.key"))
	cfg.IngestInsecureHTTP = true
	g.Expect(DispatcherDeployment(cfg).Spec.Template.Spec.Containers[0].Args).To(ContainElement("--delivery-api-addr=0"))
}
