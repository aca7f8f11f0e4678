package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// TestPublishOverHTTPSWithTheNamespaceCA follows a publisher: it reads the
// CA from ConfigMap herald-ca in its own namespace (as a pod mounts it),
// publishes over HTTPS with the CloudEvents SDK, and the event is
// delivered. Plain HTTP to the ingest port, and HTTPS without that CA, are
// refused.
func TestPublishOverHTTPSWithTheNamespaceCA(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-https"
	rcv, token := receivingNamespace(t, ns, "")

	cm := &corev1.ConfigMap{}
	g.Eventually(func() error {
		return herald.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: heraldv1.CABundleConfigMapName}, cm)
	}, time.Minute, 100*time.Millisecond).Should(Succeed(), "the manager publishes herald-ca where Herald objects are")
	roots := x509.NewCertPool()
	g.Expect(roots.AppendCertsFromPEM([]byte(cm.Data["ca.crt"]))).To(BeTrue())
	g.Expect(herald.IngestURL).To(HavePrefix("https://"))
	target := herald.IngestURL + "/v1/namespaces/" + ns + "/events"

	publisher := http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	ce, err := cloudevents.NewClientHTTP(cloudevents.WithTarget(target),
		cehttp.WithHeader("Authorization", "Bearer "+token), cehttp.WithClient(publisher))
	g.Expect(err).NotTo(HaveOccurred())
	ev := cloudevents.NewEvent()
	ev.SetID("over-https")
	ev.SetSource("/e2e/https")
	ev.SetType("order.created")
	g.Expect(ev.SetData(cloudevents.ApplicationJSON, map[string]int{"orderId": 1})).To(Succeed())
	var res *cehttp.Result
	g.Expect(cloudevents.ResultAs(ce.Send(ctx, ev), &res)).To(BeTrue())
	g.Expect(res.StatusCode).To(Equal(http.StatusAccepted))
	g.Eventually(rcv.Unique, time.Minute, 100*time.Millisecond).Should(Equal(1), "the event published over HTTPS is delivered")

	// Plain HTTP to the same port: refused before ingest sees it.
	plainURL := "http://" + strings.TrimPrefix(target, "https://")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, plainURL, strings.NewReader(
		`{"specversion":"1.0","id":"over-http","source":"/e2e/https","type":"order.created",`+
			`"datacontenttype":"application/json","data":{"marker":"sent-over-plain-http"}}`))
	g.Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/cloudevents+json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusBadRequest))
	g.Expect(string(body)).To(ContainSubstring("HTTPS"))

	// HTTPS trusting only the system roots: the certificate is refused.
	_, err = (&http.Client{Transport: &http.Transport{}}).Post(target, "application/cloudevents+json", strings.NewReader("{}"))
	g.Expect(err).To(HaveOccurred())
	g.Expect(fmt.Sprint(err)).To(ContainSubstring("certificate"))

	// The event sent over plain HTTP was never stored: a later event over
	// HTTPS is the second delivery, and no delivery carries its data.
	ev.SetID("after-http")
	g.Expect(cloudevents.ResultAs(ce.Send(ctx, ev), &res)).To(BeTrue())
	g.Expect(res.StatusCode).To(Equal(http.StatusAccepted))
	g.Eventually(rcv.Unique, time.Minute, 100*time.Millisecond).Should(Equal(2))
	for _, d := range rcv.Deliveries() {
		g.Expect(string(d.Body)).NotTo(ContainSubstring("sent-over-plain-http"))
	}
}
