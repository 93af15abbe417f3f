// Command openapi3 makes the OpenAPI 3 document of the REST API from the
// Swagger 2.0 document of protoc-gen-openapiv2 (which reads the HTTP
// mapping of recsys_http.yaml; no OpenAPI 3 generator does):
//
//  1. converts it with kin-openapi's openapi2conv;
//  2. merges the hand-written overlay (info, servers, the bearer scheme,
//     the routes the gateway does not serve, the ingest body that has its
//     own decoder, the features:get answer that has its own encoder):
//     maps key by key, the overlay winning; lists and values replace, and
//     so does a map marked "x-replace: true";
//  3. marks each operation with the scope it needs (the overlay's
//     x-scopes; read when not listed, none for open routes): its security
//     requirement, x-recsys-scope, a line of its description, and the
//     401, 403 and 429 answers of serving's guard;
//  4. makes the numbers and timestamps of every schema nullable (the REST
//     marshaler writes null for non-finite numbers, protojson null for an
//     unset timestamp);
//  5. validates the result with kin-openapi and writes it as indented JSON
//     with sorted keys, so that regenerating is byte-for-byte stable.
//
// Usage: openapi3 -in recsys.swagger.json -overlay recsys_openapi.yaml -out openapi.json
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"go.yaml.in/yaml/v3"
)

func main() {
	in := flag.String("in", "", "Swagger 2.0 document (protoc-gen-openapiv2)")
	overlay := flag.String("overlay", "", "YAML overlay")
	out := flag.String("out", "", "OpenAPI 3 document to write")
	flag.Parse()
	if *in == "" || *overlay == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*in, *overlay, *out); err != nil {
		fmt.Fprintln(os.Stderr, "openapi3:", err)
		os.Exit(1)
	}
}

func run(in, overlayPath, out string) error {
	src, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var doc2 openapi2.T
	if err := json.Unmarshal(src, &doc2); err != nil {
		return fmt.Errorf("read %s: %w", in, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return fmt.Errorf("convert %s: %w", in, err)
	}
	doc, err := generic(doc3)
	if err != nil {
		return err
	}
	ov, err := os.ReadFile(overlayPath)
	if err != nil {
		return err
	}
	var overlay map[string]any
	if err := yaml.Unmarshal(ov, &overlay); err != nil {
		return fmt.Errorf("read %s: %w", overlayPath, err)
	}
	scopes, _ := overlay["x-scopes"].(map[string]any)
	delete(overlay, "x-scopes")
	merge(doc, overlay)
	if err := markScopes(doc, scopes); err != nil {
		return err
	}
	for _, s := range obj(obj(doc["components"])["schemas"]) {
		nullable(s)
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := validate(b); err != nil {
		return fmt.Errorf("the result is not a valid OpenAPI document: %w", err)
	}
	return os.WriteFile(out, b, 0o644)
}

// generic turns the converted document into plain maps and slices.
func generic(doc *openapi3.T) (map[string]any, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return m, d.Decode(&m)
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// merge copies src into dst: maps merged key by key, anything else
// replaced; a map of src with "x-replace: true" replaces dst's whole
// (without that key).
func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if sm["x-replace"] == true {
				delete(sm, "x-replace")
				dst[k] = sm
				continue
			}
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// markScopes adds to each operation what serving's guard asks of it.
func markScopes(doc map[string]any, scopes map[string]any) error {
	seen := map[string]bool{}
	for _, item := range obj(doc["paths"]) {
		for _, m := range methods {
			op := obj(obj(item)[m])
			if op == nil {
				continue
			}
			id, _ := op["operationId"].(string)
			if id == "" {
				return errors.New("an operation without operationId")
			}
			seen[id] = true
			scope := "read"
			if s, ok := scopes[id].(string); ok {
				scope = s
			}
			if rb := obj(op["requestBody"]); rb != nil {
				delete(rb, "x-originalParamName")
			}
			responses := obj(op["responses"])
			if d := obj(responses["default"]); d != nil && d["description"] == "An unexpected error response." {
				d["description"] = "An error: `code` is the gRPC code (INVALID_ARGUMENT is 400, NOT_FOUND 404, UNAVAILABLE 503, ...), `message` names the field."
			}
			op["x-recsys-scope"] = scope
			if scope == "none" {
				op["security"] = []any{}
				continue
			}
			if !slices.Contains([]string{"read", "write", "admin"}, scope) {
				return fmt.Errorf("x-scopes: %s: %q is not none, read, write or admin", id, scope)
			}
			op["security"] = []any{map[string]any{"bearer": []any{}}}
			desc, _ := op["description"].(string)
			if desc != "" {
				desc = strings.TrimRight(desc, "\n") + "\n\n"
			}
			op["description"] = desc + "Needs a bearer token of scope `" + scope + "` (or higher) when the server has tokens."
			add := func(code, name string) {
				if _, ok := responses[code]; !ok {
					responses[code] = map[string]any{"$ref": "#/components/responses/" + name}
				}
			}
			add("401", "Unauthenticated")
			if scope != "read" { // every valid token has read
				add("403", "PermissionDenied")
			}
			add("429", "TooManyRequests")
		}
	}
	for id := range scopes {
		if !seen[id] {
			return fmt.Errorf("x-scopes: no operation %s", id)
		}
	}
	return nil
}

// nullable marks the numbers and timestamps of a schema (and of the
// schemas inside it) nullable.
func nullable(s any) {
	m := obj(s)
	if m == nil {
		return
	}
	if m["type"] == "number" || m["format"] == "date-time" {
		m["nullable"] = true
	}
	for _, p := range obj(m["properties"]) {
		nullable(p)
	}
	nullable(m["items"])
	nullable(m["additionalProperties"])
}

func validate(b []byte) error {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(b)
	if err != nil {
		return err
	}
	return doc.Validate(context.Background())
}
