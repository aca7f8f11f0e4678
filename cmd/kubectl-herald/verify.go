package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/signature"
)

type verifyOptions struct {
	request string
	body    string
	headers []string
}

func newVerifyCommand(a *app) *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify ENDPOINT",
		Short: "Check a saved webhook request's signature against an endpoint's signing keys",
		Long: `verify checks the webhook-signature of a request a receiver saved, with the
keys of ENDPOINT's managed Secret, as of the request's webhook-timestamp: it
tells a receiver whose verification fails whether the request or its code
is at fault. Give the request as raw HTTP (--request, as captured by
httputil.DumpRequest, a proxy or nc), or as a body file and its headers.
Reading the keys needs get on the endpoint's Secret.`,
		Example: `  kubectl herald verify orders-receiver -n shop --request saved.http
  kubectl herald verify orders-receiver -n shop --body body.json \
      -H 'webhook-id: msg_…' -H 'webhook-timestamp: 1767225600' -H 'webhook-signature: v1,…'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), a, o, args[0])
		},
	}
	cmd.Flags().StringVar(&o.request, "request", "", "File with the raw HTTP request (request line, headers, blank line, body); - for standard input.")
	cmd.Flags().StringVar(&o.body, "body", "", "File with the request body, exactly as received.")
	cmd.Flags().StringArrayVarP(&o.headers, "header", "H", nil, "A request header, 'Name: value' (repeat for webhook-id, webhook-timestamp, webhook-signature).")
	return cmd
}

func runVerify(ctx context.Context, a *app, o *verifyOptions, name string) error {
	header, body, err := o.read(a)
	if err != nil {
		return err
	}
	keys, err := endpointKeys(ctx, a, name)
	if err != nil {
		return err
	}
	ts := header.Get(heraldv1.WebhookTimestampHeader)
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("the request's webhook-timestamp %q is not Unix seconds: was the request saved with its headers?", ts)
	}
	sent := time.Unix(unix, 0)
	// Verified as of its timestamp: a saved request is old by nature.
	v, err := signature.NewVerifier(keys, signature.WithClock(func() time.Time { return sent }))
	if err != nil {
		return fmt.Errorf("the endpoint's signing keys cannot be used: %w", err)
	}
	if err := v.Verify(header, body); err != nil {
		return fmt.Errorf("signature NOT valid: %w\n"+
			"Check that the body is byte for byte what was received (no re-encoded JSON, no added newline), and that the signed content is \"<webhook-id>.<webhook-timestamp>.<body>\". "+
			"A request signed before a rotation whose overlap window ended no longer verifies: the old key is gone", err)
	}
	_, _ = fmt.Fprintf(a.out(), "Signature valid: webhook-id %s, sent %s (%s ago), %d key(s) of WebhookEndpoint %s/%s checked.\n",
		header.Get(heraldv1.WebhookIDHeader), sent.UTC().Format(time.RFC3339), duration.HumanDuration(a.now().Sub(sent)), len(keys), a.namespace, name)
	return nil
}

// read returns the saved request's headers and body.
func (o *verifyOptions) read(a *app) (http.Header, []byte, error) {
	switch {
	case o.request != "" && (o.body != "" || len(o.headers) > 0):
		return nil, nil, errors.New("give either --request, or --body with --header, not both")
	case o.request != "":
		raw, err := readFile(a, o.request)
		if err != nil {
			return nil, nil, err
		}
		br := bufio.NewReader(bytes.NewReader(raw))
		req, err := http.ReadRequest(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%s is not a raw HTTP request (request line, headers, blank line, body): %w", o.request, err)
		}
		if req.Header.Get("Content-Length") == "" && len(req.TransferEncoding) == 0 {
			// Saved without a length (a client-side dump): the body is
			// the rest of the file.
			req.Body = io.NopCloser(br)
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, nil, fmt.Errorf("read the body of %s: %w", o.request, err)
		}
		return req.Header, body, nil
	case o.body != "":
		body, err := readFile(a, o.body)
		if err != nil {
			return nil, nil, err
		}
		header := http.Header{}
		for _, h := range o.headers {
			name, value, ok := strings.Cut(h, ":")
			if !ok {
				return nil, nil, fmt.Errorf("--header %q: write it as 'Name: value'", h)
			}
			header.Add(textproto.TrimString(name), textproto.TrimString(value))
		}
		return header, body, nil
	}
	return nil, nil, errors.New("give the saved request: --request FILE, or --body FILE with -H for each webhook-* header")
}

func readFile(a *app, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(a.streams.In)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// endpointKeys reads every key the endpoint signs with now, from its
// managed Secret.
func endpointKeys(ctx context.Context, a *app, name string) ([]string, error) {
	ep := &heraldv1.WebhookEndpoint{}
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.namespace, Name: name}, ep); err != nil {
		return nil, endpointError(a.namespace, name, err)
	}
	if ep.Status.SigningSecretRef == nil {
		return nil, fmt.Errorf("WebhookEndpoint %s/%s has no signing Secret yet (status.signingSecretRef): is it Ready? (kubectl describe webhookendpoint %s -n %s)", a.namespace, name, name, a.namespace)
	}
	secret := &corev1.Secret{}
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.namespace, Name: ep.Status.SigningSecretRef.Name}, secret); err != nil {
		return nil, fmt.Errorf("read the endpoint's signing keys from Secret %s/%s: %w (verify needs get on that Secret)", a.namespace, ep.Status.SigningSecretRef.Name, err)
	}
	var keys []string
	if raw := secret.Data[heraldv1.SigningKeysKey]; len(raw) > 0 {
		var list []heraldv1.SigningKey
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("the Secret %s/%s key %s is not Herald's key list", a.namespace, secret.Name, heraldv1.SigningKeysKey)
		}
		for _, k := range list {
			keys = append(keys, k.Secret)
		}
	}
	if len(keys) == 0 && len(secret.Data[heraldv1.SigningSecretKey]) > 0 {
		keys = append(keys, string(secret.Data[heraldv1.SigningSecretKey]))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("the Secret %s/%s holds no signing key", a.namespace, secret.Name)
	}
	return keys, nil
}
