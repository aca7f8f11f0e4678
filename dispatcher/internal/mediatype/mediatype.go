// Package mediatype owns the one rule every dispatcher stage uses to decide
// whether a CloudEvent's data is JSON: ingest (which representation the
// stored structured form gets), the router (what a filter's data variable
// holds) and delivery (how each payload format carries the data).
package mediatype

import (
	"errors"
	"mime"
	"strings"
)

// IsJSON reports whether datacontenttype declares JSON-formatted data, as
// the CloudEvents JSON format (1.0.2, section 3.1.1) defines it: a media
// type that, stripped of parameters, has the form */json or */*+json
// (application/json, text/json, application/vnd.foo+json,
// application/cloudevents+json). Type and subtype are compared
// case-insensitively and parameters are ignored, even malformed ones. An
// empty content type is JSON too: the format says to proceed as if it were
// application/json. Anything that is not a media type is not JSON.
//
// This is the rule of the CloudEvents Go SDK's event.isJSON since
// cloudevents/sdk-go#1274; the SDK release Herald pins (v2.16.2) still
// accepts only a fixed list, which ingest works around (see
// dispatcher/ingest).
func IsJSON(contentType string) bool {
	if strings.TrimSpace(contentType) == "" {
		return true
	}
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) {
		return false
	}
	_, subtype, ok := strings.Cut(mediaType, "/")
	if !ok {
		return false
	}
	return subtype == "json" || strings.HasSuffix(subtype, "+json")
}
