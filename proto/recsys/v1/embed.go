package recsysv1

import _ "embed"

// OpenAPI is the generated OpenAPI 3 description of the REST API
// (proto/gen.sh: protoc-gen-openapiv2's output converted and completed by
// proto/tools/openapi3 with recsys_openapi.yaml).
//
//go:embed openapi.json
var OpenAPI []byte
