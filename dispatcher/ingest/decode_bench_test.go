package ingest

import (
	"bytes"
	"fmt"
	"testing"
)

// benchEvent is a structured event of about 1 KiB as publishers send them:
// the usual context attributes, two extensions and a nested JSON object as
// data.
func benchEvent(i int) []byte {
	return fmt.Appendf(nil, `{
  "specversion": "1.0",
  "id": "3f1c9a52-7d4e-4b8a-9c61-%012d",
  "source": "https://shop.example.com/orders/service",
  "type": "com.example.shop.order.shipped.v1",
  "subject": "orders/2026/ord-%06d",
  "time": "2026-03-14T09:26:53.589793+01:00",
  "datacontenttype": "application/json",
  "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  "tenant": "acme-europe",
  "data": {
    "orderId": "ord-%06d",
    "customer": {"id": "cus-88231", "name": "Zoë Müller", "email": "zoe.mueller@example.com", "tier": "gold"},
    "shipping": {
      "carrier": "DHL", "service": "express", "trackingNumber": "JD014600006281412345",
      "address": {"line1": "Hauptstraße 12", "line2": null, "city": "Berlin", "postalCode": "10115", "country": "DE"}
    },
    "items": [
      {"sku": "SKU-1001", "name": "Wireless mouse", "quantity": 2, "unitPrice": {"amount": 2499, "currency": "EUR"}},
      {"sku": "SKU-2044", "name": "USB-C dock, 12 ports", "quantity": 1, "unitPrice": {"amount": 18900, "currency": "EUR"}},
      {"sku": "SKU-3310", "name": "Laptop stand", "quantity": 1, "unitPrice": {"amount": 4999, "currency": "EUR"}}
    ],
    "totals": {"net": 28897, "tax": 5490, "gross": 34387, "currency": "EUR"},
    "tags": ["priority", "gift-wrap", "b2b"],
    "shippedAt": "2026-03-14T09:26:50Z",
    "notes": "Leave at the reception desk & ask for \"Frau Schmidt\"."
  }
}`, i, i, i)
}

func BenchmarkDecodeStructured(b *testing.B) {
	body := benchEvent(1)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, rerr := decodeStructured(body); rerr != nil {
			b.Fatal(rerr)
		}
	}
}

// BenchmarkDecodeCanonical decodes benchEvent as a CloudEvents SDK writes
// it: compact, in the SDK's attribute order, time in UTC. That is Herald's
// stored form, so finish need not decode it a second time.
func BenchmarkDecodeCanonical(b *testing.B) {
	decoded, rerr := decodeStructured(benchEvent(1))
	if rerr != nil {
		b.Fatal(rerr)
	}
	body := decoded.payload
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, rerr := decodeStructured(body); rerr != nil {
			b.Fatal(rerr)
		}
	}
}

func BenchmarkDecodeBatch(b *testing.B) {
	const events = 8
	elements := make([][]byte, events)
	for i := range elements {
		elements[i] = benchEvent(i)
	}
	body := append(append([]byte("["), bytes.Join(elements, []byte(",\n"))...), ']')
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		decoded, rerr := decodeBatch(body, DefaultMaxBatchEvents)
		if rerr != nil {
			b.Fatal(rerr)
		}
		if len(decoded) != events {
			b.Fatalf("%d events decoded, want %d", len(decoded), events)
		}
	}
}
