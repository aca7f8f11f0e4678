// Package fieldhash derives identifiers from lists of strings: the
// de-duplication ids and webhook ids of the queue, and the keys of
// ingest's authentication cache. Each is computed for every event or
// request, so it is written to allocate only the string it returns.
package fieldhash

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// Hex is the lowercase hex SHA-256 of domain and fields, each preceded by
// its length as a big-endian uint64, so distinct lists never share an
// input. The value is stored (de-duplication ids in JetStream), so it must
// not change.
func Hex(domain string, fields ...string) string {
	size := 8 + len(domain)
	for _, f := range fields {
		size += 8 + len(f)
	}
	var stack [256]byte
	buf := stack[:0]
	if size > len(stack) {
		buf = make([]byte, 0, size)
	}
	buf = appendField(buf, domain)
	for _, f := range fields {
		buf = appendField(buf, f)
	}
	sum := sha256.Sum256(buf)
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

func appendField(buf []byte, f string) []byte {
	buf = binary.BigEndian.AppendUint64(buf, uint64(len(f)))
	return append(buf, f...)
}
