package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func serve(t *testing.T, method, path string, hdr ...string) *http.Response {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET "+Prefix, Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"code":5}`)
	})))
	mux.Handle("GET /ui", Redirect())
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIndex(t *testing.T) {
	r := serve(t, "GET", "/ui/")
	b := body(t, r)
	if r.StatusCode != 200 || r.Header.Get("Content-Type") != "text/html; charset=utf-8" || !strings.Contains(b, `<script type="module" src="/ui/js/app.js">`) {
		t.Fatalf("GET /ui/ = %d %q %.200s", r.StatusCode, r.Header.Get("Content-Type"), b)
	}
	if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Errorf("CSP = %q, want self only", csp)
	}
	if r.Header.Get("Cache-Control") != "no-cache" || r.Header.Get("ETag") == "" || r.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers = %v", r.Header)
	}
	// Revalidation by ETag answers 304.
	if r2 := serve(t, "GET", "/ui/index.html", "If-None-Match", r.Header.Get("ETag")); r2.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", r2.StatusCode)
	}
	if r := serve(t, "GET", "/ui"); r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui = %d %q, want a redirect to /ui/", r.StatusCode, r.Header.Get("Location"))
	}
	if r := serve(t, "HEAD", "/ui/"); r.StatusCode != 200 {
		t.Errorf("HEAD /ui/ = %d", r.StatusCode)
	}
}

// Every file index.html and the modules refer to is embedded and served
// with its type; nothing is loaded from another host.
func TestAssetsEmbedded(t *testing.T) {
	files := Files()
	for _, want := range []string{"index.html", "style.css", "favicon.svg", "js/app.js", "js/api.js", "js/overview.js", "js/features.js",
		"js/recs.js", "js/hot.js", "vendor/uplot-1.6.32/uPlot.iife.min.js", "vendor/uplot-1.6.32/uPlot.min.css", "vendor/uplot-1.6.32/LICENSE"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is not embedded (files: %v)", want, files)
		}
	}
	refs := regexp.MustCompile(`(?:src|href)="(/ui/[^"]+)"|from '\./([^']+)'`)
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
	seen := map[string]bool{}
	var walk func(path string)
	walk = func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		r := serve(t, "GET", path)
		b := body(t, r)
		ext := ".html" // the index, /ui/
		if i := strings.LastIndexByte(path, '.'); i > strings.LastIndexByte(path, '/') {
			ext = path[i:]
		}
		if r.StatusCode != 200 || r.Header.Get("Content-Type") != types[ext] {
			t.Errorf("GET %s = %d %q, want 200 %q", path, r.StatusCode, r.Header.Get("Content-Type"), types[ext])
			return
		}
		if strings.HasPrefix(path, "/ui/vendor/") != strings.Contains(r.Header.Get("Cache-Control"), "immutable") {
			t.Errorf("GET %s: Cache-Control %q", path, r.Header.Get("Cache-Control"))
		}
		if ext != ".js" && ext != ".html" {
			return
		}
		if strings.Contains(b, "http://") && !strings.HasPrefix(path, "/ui/vendor/") || strings.Contains(b, "https://") && !strings.HasPrefix(path, "/ui/vendor/") {
			t.Errorf("%s names another host", path)
		}
		dir := path[:strings.LastIndexByte(path, '/')+1]
		for _, m := range refs.FindAllStringSubmatch(b, -1) {
			if m[1] != "" {
				walk(m[1])
			} else {
				walk(dir + m[2])
			}
		}
	}
	walk("/ui/")
	if len(seen) < 10 {
		t.Errorf("only %d files reached from index.html: %v", len(seen), seen)
	}
}

func TestUnknownPaths(t *testing.T) {
	for _, p := range []string{"/ui/nope.js", "/ui/js/", "/ui/vendor/", "/ui/../go.mod", "/ui/js/app.js.map", "/ui/static/index.html"} {
		r := serve(t, "GET", p)
		if p == "/ui/../go.mod" { // the mux cleans it to /go.mod, outside the console
			if r.StatusCode == 200 {
				t.Errorf("GET %s = 200", p)
			}
			continue
		}
		if b := body(t, r); r.StatusCode != 404 || b != `{"code":5}` {
			t.Errorf("GET %s = %d %s, want the caller's 404", p, r.StatusCode, b)
		}
	}
}
