package serving

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/updater"
)

// Metrics are the serving metrics, named recsys_<subsystem>_<name>_<unit>.
// A nil *Metrics records nothing.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec
	overload *prometheus.CounterVec
}

// NewMetrics registers the serving metrics, the process and Go runtime
// collectors, and gauges read from the store and the updater at scrape
// time, in reg.
func NewMetrics(reg *prometheus.Registry, store *featurestore.Store, upd *updater.Updater) *Metrics {
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "recsys_server_request_duration_seconds",
			Help:    "Request latency by listener (http, grpc, flight), method and status code.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"listener", "method", "code"}),
		overload: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "recsys_server_overload_rejections_total",
			Help: "Requests refused at once because the listener's concurrency limit was reached.",
		}, []string{"listener"}),
	}
	reg.MustRegister(m.requests, m.overload,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	counter("recsys_updater_applied_events_total", "Events applied to the store.", func() float64 { return float64(store.Stats().Events) })
	counter("recsys_updater_duplicate_events_total", "Events skipped as duplicates.", func() float64 { return float64(store.Stats().Duplicates) })
	gauge("recsys_updater_lag_events", "Log entries not yet applied.", func() float64 {
		return float64(upd.LogEnd() - store.AppliedOffset())
	})
	gauge("recsys_updater_event_time_lag_seconds", "Store clock minus the newest event time applied.", func() float64 {
		return float64(store.Now()-store.Stats().MaxTS) / 1000
	})
	gauge("recsys_updater_watermark_seconds", "The watermark, Unix seconds.", func() float64 {
		_, wm := upd.Watermark()
		return float64(wm) / 1000
	})
	gauge("recsys_store_users", "Users with features.", func() float64 { return float64(store.Stats().Users) })
	gauge("recsys_store_items", "Items with features.", func() float64 { return float64(store.Stats().Items) })
	gauge("recsys_store_dead_letters", "Dead letters kept.", func() float64 { return float64(store.DeadLetterCount()) })
	pm := func(f func(*featurestore.PebbleStats) float64) func() float64 {
		return func() float64 {
			st, err := store.PebbleStats()
			if err != nil {
				return 0
			}
			return f(&st)
		}
	}
	gauge("recsys_store_disk_bytes", "Disk space used by the store.", pm(func(s *featurestore.PebbleStats) float64 { return float64(s.DiskBytes) }))
	counter("recsys_store_compactions_total", "Pebble compactions.", pm(func(s *featurestore.PebbleStats) float64 { return float64(s.Compactions) }))
	counter("recsys_store_block_cache_hits_total", "Pebble block cache hits.", pm(func(s *featurestore.PebbleStats) float64 { return float64(s.CacheHits) }))
	counter("recsys_store_block_cache_misses_total", "Pebble block cache misses.", pm(func(s *featurestore.PebbleStats) float64 { return float64(s.CacheMisses) }))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *Metrics) observe(listener, method, code string, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(listener, method, code).Observe(d.Seconds())
}

func (m *Metrics) rejected(listener string) {
	if m != nil {
		m.overload.WithLabelValues(listener).Inc()
	}
}

// routeOf names a REST request by its route, not its path, so that ids do
// not explode the label set.
func routeOf(r *http.Request) string {
	p := r.URL.Path
	for _, prefix := range []string{"/v1/users/", "/v1/items/"} {
		if rest, ok := strings.CutPrefix(p, prefix); ok && rest != "popular" {
			if i := strings.LastIndexByte(rest, '/'); i >= 0 {
				return r.Method + " " + prefix + "{id}" + rest[i:]
			}
		}
	}
	switch p {
	case "/v1/events", "/v1/features:get", "/v1/stats", "/v1/feature-views", "/v1/dead-letters", "/v1/items/popular",
		"/healthz", "/readyz", "/metrics", "/openapi.json":
		return r.Method + " " + p
	}
	return r.Method + " other"
}

func strconvItoa(n int) string { return strconv.Itoa(n) }
