package serving

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// restServer is the REST handler of a fresh env on an httptest server.
func restServer(t *testing.T) (*env, *httptest.Server) {
	t.Helper()
	e := newEnv(t)
	h, err := e.srv.HTTPHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return e, ts
}

func TestRESTWrongMethodIs405(t *testing.T) {
	_, ts := restServer(t)
	for _, tc := range []struct{ method, path, allow string }{
		{"GET", "/v1/events", "POST"},
		{"DELETE", "/v1/events", "POST"},
		{"POST", "/v1/stats", "GET, HEAD"},
		{"GET", "/v1/features:get", "POST"},
		{"PUT", "/v1/users/u1/features", "GET, HEAD"},
		{"POST", "/v1/items/i%2F1/similar", "GET, HEAD"},
		{"DELETE", "/v1/models", "GET, HEAD"},
		{"POST", "/healthz", "GET, HEAD"},
		{"POST", "/openapi.json", "GET, HEAD"},
	} {
		req, _ := http.NewRequest(tc.method, ts.URL+tc.path, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Details []any  `json:"details"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			t.Errorf("%s %s: body %q is not the JSON error: %v", tc.method, tc.path, body, err)
		}
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.allow ||
			resp.Header.Get("Content-Type") != "application/json" ||
			out.Code != int(codes.Unimplemented) || !strings.Contains(out.Message, tc.method) || out.Details == nil {
			t.Errorf("%s %s = %d Allow %q %s, want 405 Allow %q with the JSON error", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), body, tc.allow)
		}
	}
}

func TestRESTUnknownPathIs404(t *testing.T) {
	_, ts := restServer(t)
	for _, path := range []string{"/v1/nope", "/", "/v1/users/u1", "/v1/stats/x"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out map[string]any
		if resp.StatusCode != 404 || json.Unmarshal(body, &out) != nil || out["code"] != float64(codes.NotFound) {
			t.Errorf("GET %s = %d %s, want 404 with the JSON error", path, resp.StatusCode, body)
		}
	}
}

func TestStatsBeforeAndAfterTheFirstEvent(t *testing.T) {
	e := newEnv(t)
	st, err := e.srv.GetStats(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Watermark != 0 || st.MaxEventTs != 0 || st.LogEndOffset != 0 {
		t.Errorf("empty server: %v, want zeros (no watermark before the first event)", st)
	}
	e.ingest(t, userViews(3))
	st, _ = e.srv.GetStats(context.Background(), nil)
	if st.MaxEventTs != baseTS+2 || st.Watermark != baseTS+2-time.Hour.Milliseconds() || st.EventsApplied != 3 || st.Users != 3 || st.Items != 3 {
		t.Errorf("after 3 events: %v", st)
	}
}

// A query parameter that names no field is refused, not ignored: a typo
// such as exclude_sen=true would otherwise change nothing without a word.
func TestRESTUnknownQueryParameterIs400(t *testing.T) {
	_, ts := restServer(t)
	for _, tc := range []struct{ path, want string }{
		{"/v1/users/u1/recommendations?k=5&exclude_sen=true", "exclude_sen: unknown query parameter (did you mean exclude_seen?)"},
		{"/v1/items/i1/similar?kk=3", "kk: unknown query parameter (did you mean k?)"},
		{"/v1/items/popular?windw=1h", "windw: unknown query parameter (did you mean window?)"},
		{"/v1/dead-letters?zzzzzzzz=1", "zzzzzzzz: unknown query parameter (known: limit"},
	} {
		resp, err := http.Get(ts.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tc.want) {
			t.Errorf("GET %s: %d %s, want 400 with %q", tc.path, resp.StatusCode, body, tc.want)
		}
	}
	for _, ok := range []string{"/v1/users/u1/recommendations?k=5&exclude_seen=true&category=c1", "/v1/items/popular?k=3&window=1h&by=view"} {
		resp, err := http.Get(ts.URL + ok)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", ok, resp.StatusCode)
		}
	}
}

// The web console's files load without a token (they hold no data) behind
// the same guard whose API routes need one; unknown files are the JSON 404.
func TestConsoleBehindTheGuard(t *testing.T) {
	e := newEnv(t)
	h, err := e.srv.HTTPHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tokens := Tokens{"reader-token-0123456789": ScopeRead}
	ts := httptest.NewServer(NewGuard("http", tokens, 4, time.Minute, nil).HTTPMiddleware(h))
	t.Cleanup(ts.Close)
	get := func(method, path, token string) (*http.Response, string) {
		req, _ := http.NewRequest(method, ts.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	for _, p := range []string{"/ui/", "/ui/js/app.js", "/ui/style.css", "/ui/vendor/uplot-1.6.32/uPlot.iife.min.js"} {
		if resp, b := get("GET", p, ""); resp.StatusCode != 200 || len(b) == 0 || resp.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s without a token = %d (%d bytes)", p, resp.StatusCode, len(b))
		}
		if resp, _ := get("GET", p, "wrong-token-0123456789"); resp.StatusCode != 200 {
			t.Errorf("GET %s with a wrong token = %d, want 200 (no data behind it)", p, resp.StatusCode)
		}
	}
	if resp, _ := get("GET", "/v1/stats", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/stats without a token = %d, want 401", resp.StatusCode)
	}
	if resp, _ := get("GET", "/v1/stats", "reader-token-0123456789"); resp.StatusCode != 200 {
		t.Errorf("GET /v1/stats with the token = %d", resp.StatusCode)
	}
	if resp, b := get("GET", "/ui/nope.js", ""); resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(b, `"code":5`) {
		t.Errorf("GET /ui/nope.js = %d %q %s, want the JSON 404", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if resp, _ := get("POST", "/ui/", ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui/ = %d, want 405", resp.StatusCode)
	}
	resp, _ := get("GET", "/ui", "")
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/ui/" {
		t.Errorf("GET /ui = %d at %s, want the redirect to /ui/", resp.StatusCode, resp.Request.URL.Path)
	}
}
