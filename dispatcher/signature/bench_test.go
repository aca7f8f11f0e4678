package signature_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// benchBody is a 1 KiB payload, a typical webhook size.
var benchBody = func() []byte {
	body := make([]byte, 1024)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	return body
}()

var sinkHeader string

func BenchmarkSign(b *testing.B) {
	for _, bc := range []struct {
		name string
		keys []string
	}{
		{"1key", []string{specSecret}},
		{"2keys", []string{specSecret, otherSecret}},
		{"ed25519", []string{edSecretKey}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := mustSigner(b, bc.keys...)
			ts := time.Now()
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			for b.Loop() {
				sinkHeader = s.Sign("msg_2b6YbXzGk7hQ1vBfN0sR3Lq9", ts, benchBody)
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, bc := range []struct {
		name     string
		signWith []string
		verifyBy []string
	}{
		{"hmac", []string{specSecret}, []string{specSecret}},
		// During rotation a receiver that already has the new key matches
		// the second entry.
		{"hmac-rotation", []string{specSecret, otherSecret}, []string{otherSecret}},
		{"ed25519", []string{edSecretKey}, []string{edPublicKey}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			now := time.Now()
			h := http.Header{}
			mustSigner(b, bc.signWith...).SetHeaders(h, "msg_2b6YbXzGk7hQ1vBfN0sR3Lq9", now, benchBody)
			v := mustVerifier(b, bc.verifyBy, signature.WithClock(func() time.Time { return now }))
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			for b.Loop() {
				if err := v.Verify(h, benchBody); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerifyRejectsJunk(b *testing.B) {
	// The worst header an attacker can send to an HMAC receiver: the bounded
	// number of well-formed entries, none matching.
	junk := ""
	for i := range signature.MaxSignatureEntries * 4 {
		junk += "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" + strconv.Itoa(i%10) + "AA= "
	}
	now := time.Now()
	h := headers("msg_1", strconv.FormatInt(now.Unix(), 10), junk)
	v := mustVerifier(b, []string{specSecret, otherSecret}, signature.WithClock(func() time.Time { return now }))
	b.ReportAllocs()
	for b.Loop() {
		_ = v.Verify(h, benchBody)
	}
}
