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
	"github.com/streamrec/recsys/featurestore/models"
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
// collectors, and gauges read from the store, its models and the updater at scrape
// time, in reg.
func NewMetrics(reg *prometheus.Registry, store *featurestore.Store, mods *models.Models, upd *updater.Updater) *Metrics {
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
	b := BuildInfo()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "recsys_build_info",
		Help:        "Always 1; the labels name the build: module version, VCS revision (-modified: uncommitted changes) and Go version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	buildInfo.Set(1)
	reg.MustRegister(m.requests, m.overload, buildInfo,
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
	gauge("recsys_window_state_entities", "Entities whose window state is materialized in memory for online reads.", func() float64 { return float64(store.WindowStateStats().Entries) })
	gauge("recsys_window_state_bytes", "Approximate memory of the materialized window state (bounded by --state.window-cache-mb).", func() float64 { return float64(store.WindowStateStats().Bytes) })
	counter("recsys_window_state_hits_total", "Online entity reads whose window features came from the materialized state.", func() float64 { return float64(store.WindowStateStats().Hits) })
	counter("recsys_window_state_misses_total", "Online entity reads that found no materialized state covering their time (then built, or read from the tiles).", func() float64 { return float64(store.WindowStateStats().Misses) })
	counter("recsys_window_state_updates_total", "Materialized entity states the writer updated with an apply batch.", func() float64 { return float64(store.WindowStateStats().Updates) })
	reg.MustRegister(modelCollector{mods}, cacheCollector{store, mods})
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
	if p == "/ui" || strings.HasPrefix(p, "/ui/") {
		return r.Method + " /ui/"
	}
	switch p {
	case "/v1/events", "/v1/features:get", "/v1/stats", "/v1/feature-views", "/v1/dead-letters", "/v1/items/popular", "/v1/models",
		"/healthz", "/readyz", "/metrics", "/openapi.json":
		return r.Method + " " + p
	}
	return r.Method + " other"
}

func strconvItoa(n int) string { return strconv.Itoa(n) }

// cacheCollector exports the record caches' entries and bytes.
type cacheCollector struct {
	store  *featurestore.Store
	models *models.Models
}

var (
	cacheEntriesDesc = prometheus.NewDesc("recsys_state_cache_entries", "Records held by each record cache (store_* and model_*: the writer's; *_reads: the readers').", []string{"cache"}, nil)
	cacheLookupsDesc = prometheus.NewDesc("recsys_state_cache_lookups_total", "Lookups of each record cache, by result (hit: the record was cached; miss: read from Pebble, or created).", []string{"cache", "result"}, nil)
	cacheBytesDesc   = prometheus.NewDesc("recsys_state_cache_bytes", "Bytes of each record cache's records as it weighs them, under --state.memory-limit (0 without it: the caches are then bounded by their entries alone).", []string{"cache"}, nil)
)

func (c cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cacheEntriesDesc
	ch <- cacheBytesDesc
	ch <- cacheLookupsDesc
}

func (c cacheCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range append(c.store.CacheStats(), c.models.CacheStats()...) {
		ch <- prometheus.MustNewConstMetric(cacheEntriesDesc, prometheus.GaugeValue, float64(st.Entries), st.Name)
		ch <- prometheus.MustNewConstMetric(cacheBytesDesc, prometheus.GaugeValue, float64(st.Bytes), st.Name)
		ch <- prometheus.MustNewConstMetric(cacheLookupsDesc, prometheus.CounterValue, float64(st.Hits), st.Name, "hit")
		ch <- prometheus.MustNewConstMetric(cacheLookupsDesc, prometheus.CounterValue, float64(st.Misses), st.Name, "miss")
	}
}

// modelCollector exports the models' state at each scrape.
type modelCollector struct{ models *models.Models }

var (
	modelExamplesDesc = prometheus.NewDesc("recsys_model_examples_total", "Examples each model learned (pair updates for item2item, scored-then-learned examples for the ranker).", []string{"model"}, nil)
	modelVersionDesc  = prometheus.NewDesc("recsys_model_version", "Model version (the published version for the ranker).", []string{"model"}, nil)
	modelAUCDesc      = prometheus.NewDesc("recsys_model_rolling_auc", "Progressive-validation AUC over the rolling window, by weights (training, published).", []string{"model", "weights"}, nil)
	modelLogLossDesc  = prometheus.NewDesc("recsys_model_rolling_log_loss", "Progressive-validation log loss over the rolling window, by weights.", []string{"model", "weights"}, nil)
	modelUpdateDesc   = prometheus.NewDesc("recsys_model_last_update_event_time_seconds", "Event time of each model's last update, Unix seconds.", []string{"model"}, nil)
	mfBuildsDesc      = prometheus.NewDesc("recsys_mf_index_builds_total", "Background builds of the MF candidate index published since the start.", nil, nil)
	mfBuildDesc       = prometheus.NewDesc("recsys_mf_index_last_build_seconds", "How long the last published build of the MF index took (table copy included).", nil, nil)
	mfItemsDesc       = prometheus.NewDesc("recsys_mf_index_items", "Items the current MF index holds (0: MF candidates come from the exact scan).", nil, nil)
	mfBytesDesc       = prometheus.NewDesc("recsys_mf_index_bytes", "Memory of the current MF index.", nil, nil)
)

func (c modelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{modelExamplesDesc, modelVersionDesc, modelAUCDesc, modelLogLossDesc, modelUpdateDesc, mfBuildsDesc, mfBuildDesc, mfItemsDesc, mfBytesDesc} {
		ch <- d
	}
}

func (c modelCollector) Collect(ch chan<- prometheus.Metric) {
	mf := c.models.MFIndexStats()
	ch <- prometheus.MustNewConstMetric(mfBuildsDesc, prometheus.CounterValue, float64(mf.Builds))
	ch <- prometheus.MustNewConstMetric(mfBuildDesc, prometheus.GaugeValue, mf.LastBuild.Seconds())
	ch <- prometheus.MustNewConstMetric(mfItemsDesc, prometheus.GaugeValue, float64(mf.Items))
	ch <- prometheus.MustNewConstMetric(mfBytesDesc, prometheus.GaugeValue, float64(mf.Bytes))
	ms, err := c.models.Info()
	if err != nil {
		return
	}
	for _, m := range ms {
		ch <- prometheus.MustNewConstMetric(modelExamplesDesc, prometheus.CounterValue, float64(m.Examples), m.Name)
		ch <- prometheus.MustNewConstMetric(modelVersionDesc, prometheus.GaugeValue, float64(m.Version), m.Name)
		ch <- prometheus.MustNewConstMetric(modelUpdateDesc, prometheus.GaugeValue, float64(m.LastEventTS)/1000, m.Name)
		if m.Name == "ranker" {
			ch <- prometheus.MustNewConstMetric(modelAUCDesc, prometheus.GaugeValue, m.AUC, m.Name, "training")
			ch <- prometheus.MustNewConstMetric(modelAUCDesc, prometheus.GaugeValue, m.PublishedAUC, m.Name, "published")
			ch <- prometheus.MustNewConstMetric(modelLogLossDesc, prometheus.GaugeValue, m.LogLoss, m.Name, "training")
			ch <- prometheus.MustNewConstMetric(modelLogLossDesc, prometheus.GaugeValue, m.PublishedLogLoss, m.Name, "published")
		}
	}
}
