package recsysv1

import _ "embed"

// OpenAPI is the generated OpenAPI (Swagger 2.0) description of the REST API.
//
//go:embed openapi.json
var OpenAPI []byte
