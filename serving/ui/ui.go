package ui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is the path the console is served under.
const Prefix = "/ui/"

// CSP lets the console load its own scripts, styles and images and talk
// to its own origin only: no inline script or style, no other host.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// asset is one embedded file, read once.
type asset struct {
	body        []byte
	contentType string
	etag        string
	immutable   bool // under vendor/<name>-<version>/: never changes at that path
}

// contentTypes are the types of the console's files, by extension; a file
// of another type is not served.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".txt":  "text/plain; charset=utf-8",
}

// Handler serves the console under Prefix: /ui/ is index.html, /ui/NAME
// an embedded file. Anything else (a directory, an unknown file, another
// method) is answered by notFound. The files hold no data, so they need
// no token; the console's data comes from the API with the token the user
// enters.
func Handler(notFound http.Handler) http.Handler {
	assets := assets()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			notFound.ServeHTTP(w, r)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, Prefix)
		if !ok {
			notFound.ServeHTTP(w, r)
			return
		}
		if name == "" {
			name = "index.html"
		}
		a, ok := assets[name]
		if !ok {
			notFound.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", a.contentType)
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("ETag", a.etag)
		if a.immutable {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			// The console's own files change with the binary: revalidate
			// (a 304 by ETag) on every load.
			h.Set("Cache-Control", "no-cache")
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	})
}

// Redirect sends /ui to /ui/.
func Redirect() http.Handler {
	return http.RedirectHandler(Prefix, http.StatusMovedPermanently)
}

// Files lists the embedded files' names relative to Prefix (for tests).
func Files() []string {
	var out []string
	for name := range assets() {
		out = append(out, name)
	}
	return out
}

// assets are the embedded files by name, read and hashed once.
var assets = sync.OnceValue(load)

func load() map[string]asset {
	assets := map[string]asset{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if path.Base(p) == "LICENSE" { // a vendored library's, served for its notice
			ct, ok = contentTypes[".txt"], true
		}
		if !ok {
			return nil
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		name := strings.TrimPrefix(p, "static/")
		assets[name] = asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:16]) + `"`,
			immutable: strings.HasPrefix(name, "vendor/")}
		return nil
	})
	if err != nil {
		panic("BUG: ui: embedded files unreadable: " + err.Error())
	}
	return assets
}
