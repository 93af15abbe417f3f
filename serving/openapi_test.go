package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// loadSpec loads and validates an OpenAPI document.
func loadSpec(t *testing.T, b []byte) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(b)
	if err != nil {
		t.Fatalf("load OpenAPI document: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("OpenAPI document is not valid: %v", err)
	}
	return doc
}

func TestOpenAPIDocument(t *testing.T) {
	doc := loadSpec(t, recsysv1.OpenAPI)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi = %q, want 3.x", doc.OpenAPI)
	}
	if doc.Info.Title != "recsys" || doc.Info.Version == "" || doc.Info.Version == "version not set" || doc.Info.Description == "" {
		t.Errorf("info = %+v, want the project's title, a version and a description", doc.Info)
	}
	if len(doc.Servers) == 0 {
		t.Errorf("no servers")
	}
	bearer := doc.Components.SecuritySchemes["bearer"]
	if bearer == nil || bearer.Value.Type != "http" || bearer.Value.Scheme != "bearer" {
		t.Fatalf("security scheme bearer = %+v, want http bearer", bearer)
	}
	for _, scope := range []string{"`read`", "`write`", "`admin`"} {
		if !strings.Contains(bearer.Value.Description, scope) {
			t.Errorf("the bearer scheme does not describe scope %s", scope)
		}
	}
	// Each operation's security and scope are what the guard enforces.
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			r := httptest.NewRequest(method, strings.NewReplacer("{user_id}", "u1", "{item_id}", "i1").Replace(path), nil)
			want := httpScope(r).String()
			got, _ := op.Extensions["x-recsys-scope"].(string)
			if want == "none" {
				if got != "none" || op.Security == nil || len(*op.Security) != 0 {
					t.Errorf("%s %s: scope %q, security %v; want open (none, [])", method, path, got, op.Security)
				}
				continue
			}
			if got != want || op.Security == nil || len(*op.Security) != 1 || (*op.Security)[0]["bearer"] == nil {
				t.Errorf("%s %s: scope %q, security %v; want %s with the bearer scheme", method, path, got, op.Security, want)
			}
			if op.Responses.Status(401) == nil || op.Responses.Status(429) == nil {
				t.Errorf("%s %s: 401 or 429 not described", method, path)
			}
		}
	}
}

// TestOpenAPIDescribesEveryRoute: the document has exactly the routes the
// REST handler serves, hand-written ones included.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	e := newEnv(t)
	e.srv.opts.Metrics = NewMetrics(prometheus.NewRegistry(), e.store, e.models, e.upd)
	var served []string
	for _, rt := range e.srv.routes(runtime.NewServeMux()) {
		served = append(served, rt.pattern)
	}
	doc := loadSpec(t, recsysv1.OpenAPI)
	var described []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			described = append(described, method+" "+path)
		}
	}
	slices.Sort(served)
	slices.Sort(described)
	if !slices.Equal(served, described) {
		t.Errorf("routes served:\n  %s\ndescribed in openapi.json:\n  %s", strings.Join(served, "\n  "), strings.Join(described, "\n  "))
	}
}

func TestOpenAPIServedVersion(t *testing.T) {
	doc := loadSpec(t, withVersion(recsysv1.OpenAPI, "v1.2.3-0.20261201135708-c669af1eae1c"))
	if doc.Info.Version != "v1.2.3-0.20261201135708-c669af1eae1c" || doc.Info.Title != "recsys" {
		t.Errorf("info = %+v, want the build's version", doc.Info)
	}
	if got := withVersion(recsysv1.OpenAPI, "(devel)"); !bytes.Equal(got, recsysv1.OpenAPI) {
		t.Errorf("a build without a version changed the document")
	}
}

// TestOpenAPIAnswersMatchTheDocument sends requests to the REST handler
// and checks each request and its answer against the document.
func TestOpenAPIAnswersMatchTheDocument(t *testing.T) {
	e := newEnv(t)
	e.srv.opts.Metrics = NewMetrics(prometheus.NewRegistry(), e.store, e.models, e.upd)
	h, err := e.srv.HTTPHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	defer ts.Close()
	doc := loadSpec(t, recsysv1.OpenAPI)
	doc.Servers = openapi3.Servers{{URL: ts.URL}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, MultiError: true}
	events := `{"events":[
		{"user_id":"u1","item_id":"i1","category_id":"c1","behavior":"view","ts":1700000000000},
		{"user_id":"u2","item_id":"i1","category_id":"c1","behavior":"purchase","ts":"2023-11-14T22:13:21Z"},
		{"userId":"u1","itemId":"i2","categoryId":"c1","behavior":"cart","ts":"1700000002000"},
		{"user_id":"u1","item_id":"i3","behavior":"view","ts":1700000003000},
		{"user_id":"u3","item_id":17,"behavior":"fav","ts":1700000004000}]}`
	do := func(method, path, body, contentType string, want int) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, ts.URL+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Errorf("%s %s: not in the document: %v", method, path, err)
			return
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
		if want < 400 {
			if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
				t.Errorf("%s %s: the request does not match the document: %v", method, path, err)
			}
			if body != "" { // ValidateRequest read it
				req.Body = io.NopCloser(strings.NewReader(body))
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s %s = %d %s, want %d", method, path, resp.StatusCode, b, want)
		}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
			Body: io.NopCloser(bytes.NewReader(b)), Options: opts}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			t.Errorf("%s %s: the answer %d %.300s does not match the document: %v", method, path, resp.StatusCode, b, err)
		}
	}
	do("GET", "/v1/models", "", "", 200) // before any example: NaN metrics, null
	do("POST", "/v1/events", events, "application/json", 200)
	if err := e.upd.WaitApplied(context.Background(), e.upd.LogEnd()); err != nil {
		t.Fatal(err)
	}
	do("POST", "/v1/events", `{"events":[{"user_id":"u1","item_id":"i1","behavior":"click","ts":1700000000000}]}`, "application/json", 400)
	do("POST", "/v1/events", events, "text/plain", 415)
	do("GET", "/v1/users/u1/features", "", "", 200)
	do("GET", "/v1/items/i1/features?features=view_count&features=purchase_rate_24h", "", "", 200)
	do("GET", "/v1/users/nobody/features", "", "", 200)
	do("POST", "/v1/features:get", `{"view":"user_features","ids":["u1","u9"],"features":["view_count","recent_items"]}`, "application/json", 200)
	do("POST", "/v1/features:get", `{"view":"user_features","ids":["u1","u9"],"features":["view_count","recent_items"],"format":"rows"}`, "application/json", 200)
	do("POST", "/v1/features:get", `{"view":"user_features","ids":["u1","u9","u1"],"format":"columns"}`, "application/json", 200)
	do("POST", "/v1/features:get", `{"view":"user_features","ids":["u1"],"features":["view_count","view_count_1h"],"format":"columns","as_of":"1700000000000"}`, "application/json", 200)
	do("POST", "/v1/features:get", `{"view":"category_features","ids":["c1","c9"],"format":"columns"}`, "application/json", 200)
	do("POST", "/v1/features:get", `{"view":"user_features","ids":["u1"],"format":"xml"}`, "application/json", 400)
	do("POST", "/v1/features:get", `{"view":"nope","ids":["u1"]}`, "application/json", 400)
	do("GET", "/v1/feature-views", "", "", 200)
	do("GET", "/v1/users/u1/recommendations?k=5&exclude=i2,i3&exclude_seen=false", "", "", 200)
	do("GET", "/v1/users/u1/recommendations?k=-1", "", "", 400)
	do("GET", "/v1/items/i1/similar?k=3", "", "", 200)
	do("GET", "/v1/users/u1/similar", "", "", 200)
	do("GET", "/v1/users/u1/history?limit=2", "", "", 200)
	do("GET", "/v1/users/nobody/history", "", "", 200)
	do("GET", "/v1/users/u1/history?limit=5000", "", "", 400)
	do("GET", "/v1/items/popular?k=3", "", "", 200)
	do("GET", "/v1/items/popular?k=3&window=1h&by=view&as_of=1700000005000", "", "", 200)
	do("GET", "/v1/models", "", "", 200)
	do("GET", "/v1/stats", "", "", 200)
	do("GET", "/v1/dead-letters?limit=5", "", "", 200)
	do("GET", "/healthz", "", "", 200)
	do("GET", "/readyz", "", "", 200)
	do("GET", "/metrics", "", "", 200)
	do("GET", "/openapi.json", "", "", 200)

	// The served document is the generated one, valid, with the build's version.
	resp, err := http.Get(ts.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	served := loadSpec(t, b)
	if v := BuildInfo().Version; v != "(devel)" && served.Info.Version != v {
		t.Errorf("served info.version = %q, want the build's %q", served.Info.Version, v)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m["openapi"] == nil {
		t.Errorf("served document: %v", err)
	}
}
