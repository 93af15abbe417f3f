// Package ui is the web console of recsys serve: static files embedded in
// the binary and served under /ui/ by the REST listener.
//
// The console is plain ES modules with no build step (static/*.js), one
// stylesheet and uPlot (vendored at a pinned version under
// static/vendor/uplot-<version>/, see DEPENDENCIES.md) for the charts. Its
// only data source is the REST API of the same server: /v1/stats,
// /v1/models, /v1/feature-views, /v1/features:get, the recommendation,
// history, similar and popular routes, /v1/dead-letters and /metrics,
// called with the bearer token the user enters once (kept in the
// browser's sessionStorage, sent as Authorization: Bearer).
//
// Guarantees: the files hold no data and load without a token, so the
// login screen can show; every answer carries a Content-Security-Policy
// that allows the console's own origin only (no inline script or style, no
// CDN), so it works offline; the console's own files are revalidated by
// ETag on each load, vendored ones are cached for good (their path names
// the version).
package ui
