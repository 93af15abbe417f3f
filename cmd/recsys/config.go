package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/datadir"
)

// config is the whole configuration of `recsys serve`. Its fields are bound
// to flags; every flag is also a key of the YAML file given with --config
// and an environment variable (configload.go has the rules).
type config struct {
	Data struct {
		Dir string
	}
	HTTP struct {
		Addr string
	}
	GRPC struct {
		Addr string
	}
	Flight struct {
		Addr          string
		SpillDir      string
		MaxSpillBytes int64
		SnapshotMB    int
	}
	Ingest struct {
		MaxBatch        int
		MaxBodyBytes    int64
		AllowedLateness time.Duration
		MaxFutureSkew   time.Duration
		MinFreeBytes    int64
	}
	Store storeConfig
	Auth  struct {
		TokenFile   string
		AllowRemote bool
	}
	TLS struct {
		Cert     string
		Key      string
		ClientCA string
	}
	Limits struct {
		MaxInFlight    int
		RequestTimeout time.Duration
	}
	Readyz struct {
		MaxLag uint64
	}
	Backup struct {
		Dir string
	}
	Shutdown struct {
		Timeout time.Duration
	}
	Load struct {
		Files  []string
		Format string
	}
	Demo struct {
		Enabled bool
		Events  int
	}
	Log     logConfig
	Kafka   kafkaConfig
	Runtime struct {
		// ProcsPerCore is the Go Ps per core (procs.go); 1: Go's default.
		ProcsPerCore int
	}
}

// storeConfig configures the feature engine of a data dir.
// ingestConfig is the event-time and disk policy of the updater.
type ingestConfig struct {
	lateness, futureSkew time.Duration
	minFree              uint64 // bytes; 0: no free-space check
	// kafka: the topic is the source (its watermarks are per partition),
	// not the embedded log.
	kafka bool
}

// openDataDir opens the data dir with the flags' store and ingest
// settings; publisher (serve's Kafka mode) may be nil.
func openDataDir(dir string, sc storeConfig, ing ingestConfig, logger *slog.Logger, reg prometheus.Registerer, publisher updater.Publisher) (*datadir.Dir, error) {
	o := datadir.Options{Logger: logger, Registerer: reg, FeaturesFile: sc.Features,
		Store:           featurestore.Options{Clock: sc.Clock, DedupHorizon: sc.DedupHorizon, CheckpointInterval: sc.State.CheckpointInterval, WindowCacheBytes: sc.State.windowCacheBytes()},
		Models:          sc.Models.options(),
		AllowedLateness: ing.lateness, MaxFutureSkew: ing.futureSkew, MinFreeBytes: ing.minFree, OutsideSource: ing.kafka, Publisher: publisher}
	if err := applyMemoryLimit(int64(sc.State.MemoryLimit), &o.Store, &o.Models, logger); err != nil {
		return nil, err
	}
	return datadir.Open(dir, o)
}

// applyMemoryLimit shares limit bytes (0: none) out to the store's and the
// models' options and sets the Go runtime's soft memory limit.
func applyMemoryLimit(limit int64, so *featurestore.Options, mo *models.Options, logger *slog.Logger) error {
	if limit <= 0 {
		return nil
	}
	b, err := featurestore.SplitMemory(limit)
	if err != nil {
		return fmt.Errorf("state.memory-limit: %w", err)
	}
	so.MemoryLimit = limit
	mo.CacheBytes = b.ModelRecords
	debug.SetMemoryLimit(b.GoLimit)
	eff := *so // the window state as the store will size it
	eff.EnsureDefaults()
	logger.Info("memory limit", "limit_mib", limit>>20, "pebble_cache_mib", b.PebbleCache>>20, "memtable_mib", b.MemTable>>20,
		"go_limit_mib", b.GoLimit>>20, "window_state_mib", max(0, eff.WindowCacheBytes)>>20, "store_records_mib", b.StoreRecords>>20, "model_records_mib", b.ModelRecords>>20)
	return nil
}

type storeConfig struct {
	Features     string
	Clock        string
	DedupHorizon time.Duration
	State        stateConfig
	Models       modelConfig
}

// stateConfig is how the state is kept (the state.* flags).
type stateConfig struct {
	CheckpointInterval time.Duration
	// WindowCacheMB is the budget of the materialized window state of
	// online reads, in MiB; 0 turns it off.
	WindowCacheMB int64
	// MemoryLimit is the process's memory budget (0: none), shared out by
	// featurestore.SplitMemory.
	MemoryLimit byteSize
}

// windowCacheBytes is featurestore.Options.WindowCacheBytes for the flag.
func (c stateConfig) windowCacheBytes() int64 {
	if c.WindowCacheMB == 0 {
		return -1
	}
	return c.WindowCacheMB << 20
}

// modelConfig holds the models' hyperparameters (models.Options
// documents each).
type modelConfig struct {
	HistoryCap    int
	PairCap       int
	PairWindow    time.Duration
	PairHalfLife  time.Duration
	DecayHalfLife time.Duration
	UserAlpha     float64
	Shrinkage     float64
	Neighbors     int
	RecentUsers   int
	Dim           int
	LearningRate  float64
	Reg           float64
	Negatives     int
	RankerAlpha   float64
	RankerBeta    float64
	RankerL1      float64
	RankerL2      float64
	RankerWindow  int
	PublishEvery  int
	PublishMargin float64
	RankerSample  float64
	RankerPairs   int
	MFIndexMin    int
	MFIndexList   int
	MFIndexScan   int
}

func (m *modelConfig) bindFlags(fs *pflag.FlagSet) {
	var d models.Options
	d.EnsureDefaults()
	fs.IntVar(&m.HistoryCap, "models.history-cap", d.HistoryCap, "interactions a user's model history keeps (Swing's cap on very active users)")
	fs.IntVar(&m.PairCap, "models.pair-cap", d.PairCap, "newest history items each event is paired with for item-item co-occurrence")
	fs.DurationVar(&m.PairWindow, "models.pair-window", d.PairWindow, "history items older than this before an event are not paired with it")
	fs.DurationVar(&m.PairHalfLife, "models.pair-half-life", d.PairHalfLife, "a pair's weight halves with each this much time between its two events")
	fs.DurationVar(&m.DecayHalfLife, "models.decay-half-life", d.DecayHalfLife, "forward decay of co-occurrence evidence")
	fs.Float64Var(&m.UserAlpha, "models.user-alpha", d.UserAlpha, "a user's pairs weigh 1/sqrt(user-alpha + the user's events)")
	fs.Float64Var(&m.Shrinkage, "models.shrinkage", d.Shrinkage, "added to the cosine denominator so rare pairs do not score 1")
	fs.IntVar(&m.Neighbors, "models.neighbors", d.Neighbors, "neighbours exposed per item (twice as many kept)")
	fs.IntVar(&m.RecentUsers, "models.recent-users", d.RecentUsers, "recent users kept per item for user-user similarity")
	fs.IntVar(&m.Dim, "models.dim", d.Dim, "latent factors of matrix factorization")
	fs.Float64Var(&m.LearningRate, "models.learning-rate", d.LearningRate, "SGD step of matrix factorization")
	fs.Float64Var(&m.Reg, "models.reg", d.Reg, "L2 penalty of matrix factorization")
	fs.IntVar(&m.Negatives, "models.negatives", d.Negatives, "sampled negatives per event for matrix factorization and the ranker")
	fs.Float64Var(&m.RankerAlpha, "models.ranker-alpha", d.RankerAlpha, "FTRL-Proximal alpha of the ranker")
	fs.Float64Var(&m.RankerBeta, "models.ranker-beta", d.RankerBeta, "FTRL-Proximal beta")
	fs.Float64Var(&m.RankerL1, "models.ranker-l1", d.RankerL1, "FTRL-Proximal L1")
	fs.Float64Var(&m.RankerL2, "models.ranker-l2", d.RankerL2, "FTRL-Proximal L2")
	fs.IntVar(&m.RankerWindow, "models.ranker-window", d.RankerWindow, "examples in the ranker's rolling AUC and log loss")
	fs.IntVar(&m.PublishEvery, "models.publish-every", d.PublishEvery, "ranker examples between publication checks")
	fs.Float64Var(&m.PublishMargin, "models.publish-margin", d.PublishMargin, "a new ranker version is published only if its rolling AUC is at least the current one's minus this")
	fs.Float64Var(&m.RankerSample, "models.ranker-sample", d.RankerSample, "share of view events the ranker trains on (by a hash of the event id; every cart, fav and purchase trains it); its examples are most of the cost of applying an event")
	fs.IntVar(&m.MFIndexMin, "models.mf-index-min", d.MFIndexMin, "items from which MF candidates come from an approximate index built in the background rather than a scan of every item; 0: always the exact scan")
	fs.IntVar(&m.MFIndexList, "models.mf-index-list", d.MFIndexList, "items per list of the MF index the build aims at")
	fs.IntVar(&m.MFIndexScan, "models.mf-index-scan", d.MFIndexScan, "lists of the MF index a query for up to 64 candidates scans (more lists for more)")
	fs.IntVar(&m.RankerPairs, "models.ranker-pairs", d.RankerPairs, "other history items each re-engagement (a cart, fav or purchase of an item the user touched before) is contrasted with in pairwise ranker steps; negative: none")
}

// options converts m; Open validates the values.
func (m *modelConfig) options() models.Options {
	o := models.Options{
		HistoryCap: m.HistoryCap, PairCap: m.PairCap, PairWindow: m.PairWindow, PairHalfLife: m.PairHalfLife,
		DecayHalfLife: m.DecayHalfLife, UserAlpha: m.UserAlpha, Shrinkage: m.Shrinkage, Neighbors: m.Neighbors,
		RecentUsers: m.RecentUsers, Dim: m.Dim, LearningRate: m.LearningRate, Reg: m.Reg, Negatives: m.Negatives,
		RankerAlpha: m.RankerAlpha, RankerBeta: m.RankerBeta, RankerL1: m.RankerL1, RankerL2: m.RankerL2,
		RankerWindow: m.RankerWindow, PublishEvery: m.PublishEvery, PublishMargin: m.PublishMargin, RankerSample: m.RankerSample,
		RankerPairs: m.RankerPairs, MFIndexMin: m.MFIndexMin, MFIndexList: m.MFIndexList, MFIndexScan: m.MFIndexScan,
	}
	if o.MFIndexMin <= 0 {
		o.MFIndexMin = -1 // off
	}
	return o
}

func (m *modelConfig) validate() error {
	for _, c := range []struct {
		name string
		v    float64
	}{
		{"history-cap", float64(m.HistoryCap)}, {"pair-cap", float64(m.PairCap)}, {"pair-window", float64(m.PairWindow)},
		{"pair-half-life", float64(m.PairHalfLife)}, {"decay-half-life", float64(m.DecayHalfLife)}, {"user-alpha", m.UserAlpha},
		{"shrinkage", m.Shrinkage}, {"neighbors", float64(m.Neighbors)}, {"recent-users", float64(m.RecentUsers)}, {"dim", float64(m.Dim)},
		{"learning-rate", m.LearningRate}, {"reg", m.Reg}, {"negatives", float64(m.Negatives)}, {"ranker-alpha", m.RankerAlpha},
		{"ranker-beta", m.RankerBeta}, {"ranker-l1", m.RankerL1}, {"ranker-l2", m.RankerL2}, {"ranker-window", float64(m.RankerWindow)},
		{"publish-every", float64(m.PublishEvery)}, {"publish-margin", m.PublishMargin}, {"ranker-sample", m.RankerSample},
		{"mf-index-list", float64(m.MFIndexList)}, {"mf-index-scan", float64(m.MFIndexScan)},
	} {
		if !(c.v > 0) {
			return fmt.Errorf("models.%s: %v is not positive", c.name, c.v)
		}
	}
	o := m.options()
	return o.Validate()
}

func (c *storeConfig) bindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Features, "features", "", "feature definitions file (default: the built-in features.yaml)")
	fs.StringVar(&c.Clock, "clock", "wall", "read clock: wall, or event (the newest event time, for replays of historical data)")
	fs.DurationVar(&c.DedupHorizon, "dedup-horizon", 7*24*time.Hour, "how long event ids are remembered for deduplication")
	fs.DurationVar(&c.State.CheckpointInterval, "state.checkpoint-interval", featurestore.DefaultCheckpointInterval, "how often, at most, the applied state is made durable (a flush of its memtables, with the offsets it reflects); a crash applies at most this much again from the log or the topic on restart")
	fs.Int64Var(&c.State.WindowCacheMB, "state.window-cache-mb", 256, "memory, in MiB, of the window state materialized for online feature reads (hourly counts, recent events and sketches per entity, updated with every batch); 0 reads every window from the tiles")
	fs.Var(&c.State.MemoryLimit, "state.memory-limit", "memory the process aims to stay within, such as 2GiB (at least 256MiB; 0: none, the caches are bounded by their entries alone): it sizes Pebble's cache and memtables, the window state (at most --state.window-cache-mb) and the record caches, which evict their least recently used records (read back from Pebble when next needed), and sets the Go runtime's soft memory limit")
	c.Models.bindFlags(fs)
}

// defaultStoreConfig is the store's configuration as serve has it with
// no flag given: the benches start from it, so that they measure what
// serve runs (a zero modelConfig, for one, turns the MF index off).
func defaultStoreConfig() storeConfig {
	var c storeConfig
	c.bindFlags(pflag.NewFlagSet("defaults", pflag.ContinueOnError))
	return c
}

func (c *storeConfig) validate() error {
	if c.State.MemoryLimit != 0 {
		if _, err := featurestore.SplitMemory(int64(c.State.MemoryLimit)); err != nil {
			return fmt.Errorf("state.memory-limit: %w", err)
		}
	}
	if c.Clock != "wall" && c.Clock != "event" {
		return fmt.Errorf("clock: %q is neither wall nor event", c.Clock)
	}
	if c.DedupHorizon < 0 {
		return fmt.Errorf("dedup-horizon: %s is negative", c.DedupHorizon)
	}
	if c.State.CheckpointInterval < 100*time.Millisecond || c.State.CheckpointInterval > time.Hour {
		return fmt.Errorf("state.checkpoint-interval: %s is not between 100ms and 1h", c.State.CheckpointInterval)
	}
	if c.State.WindowCacheMB < 0 || c.State.WindowCacheMB > 1<<20 {
		return fmt.Errorf("state.window-cache-mb: %d is not between 0 and 1048576", c.State.WindowCacheMB)
	}
	return c.Models.validate()
}

type logConfig struct {
	Level  string
	Format string
}

func (c *config) bindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Data.Dir, "data.dir", "./data", "directory of the store and the event log")
	fs.StringVar(&c.HTTP.Addr, "http.addr", ":8080", "REST listen address")
	fs.StringVar(&c.GRPC.Addr, "grpc.addr", ":9090", "gRPC listen address")
	fs.StringVar(&c.Flight.Addr, "flight.addr", ":8815", "Arrow Flight listen address")
	fs.StringVar(&c.Flight.SpillDir, "flight.spill-dir", "", "directory where a point-in-time join spills its spine while it is received (an unlinked temporary file); default the data dir")
	fs.IntVar(&c.Flight.SnapshotMB, "flight.snapshot-mb", 1024, "MiB of columnar snapshots that Flight full scans are served from with the event clock (every feature of a view's entities as prebuilt Arrow batches, built by the first full scan of a state version and read time); 0: none, every scan computes its rows")
	fs.Int64Var(&c.Flight.MaxSpillBytes, "flight.max-spill-bytes", 64<<30, "most bytes one point-in-time join's spine may spill to disk (never past --ingest.min-free-bytes of free space); past it the join is refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&c.Ingest.MaxBatch, "ingest.max-batch", 10_000, "most events in one ingest request")
	fs.Int64Var(&c.Ingest.MaxBodyBytes, "ingest.max-body-bytes", 16<<20, "largest REST request body in bytes")
	fs.DurationVar(&c.Ingest.AllowedLateness, "ingest.allowed-lateness", time.Hour, "events older than the newest event time minus this are rejected as late")
	fs.DurationVar(&c.Ingest.MaxFutureSkew, "ingest.max-future-skew", 5*time.Minute, "events more than this past the wall clock are rejected as future")
	fs.Int64Var(&c.Ingest.MinFreeBytes, "ingest.min-free-bytes", 64<<20, "free bytes the data dir's filesystem must keep: below it ingest is refused with 507 / RESOURCE_EXHAUSTED (reads go on), below half of it applying waits; both resume when space returns. 0 turns the check off")
	fs.BoolVar(&c.Demo.Enabled, "demo", false, "load the synthetic demo stream on first start (empty log)")
	fs.IntVar(&c.Demo.Events, "demo.events", 200_000, "events in the demo stream")
	fs.StringSliceVar(&c.Load.Files, "load", nil, "event files (plain or .gz) to load on first start (empty log), sorted by event time on the way in; the clock defaults to event for them. /readyz reports ready once they are applied")
	fs.StringVar(&c.Load.Format, "load.format", "auto", "format of the --load files: taobao (CSV user,item,category,behavior,unix_seconds), jsonl, or auto (jsonl for .jsonl and .json names, else taobao)")
	fs.IntVar(&c.Runtime.ProcsPerCore, "runtime.procs-per-core", 2, "Go scheduler threads (GOMAXPROCS) per core: above 1, requests preempt the apply loop's and Pebble's CPU-bound work at the kernel's finer time slices instead of waiting for Go's 10 ms ones; 1 is Go's default. Kept as the runtime set it when GOMAXPROCS is in the environment or a CPU quota is below the cores")
	c.Store.bindFlags(fs)
	fs.StringVar(&c.Auth.TokenFile, "auth.token-file", "", "file of TOKEN SCOPE lines (scopes read, write, admin); without it no call is authenticated and the server listens on loopback only")
	fs.BoolVar(&c.Auth.AllowRemote, "auth.allow-unauthenticated-remote", false, "without a token file, listen on the addresses as given instead of loopback only")
	fs.StringVar(&c.TLS.Cert, "tls.cert", "", "PEM certificate: serve TLS on all three listeners")
	fs.StringVar(&c.TLS.Key, "tls.key", "", "PEM private key of --tls.cert")
	fs.StringVar(&c.TLS.ClientCA, "tls.client-ca", "", "PEM CA bundle: require client certificates signed by it (mTLS)")
	fs.Uint64Var(&c.Readyz.MaxLag, "readyz.max-lag", 100_000, "log entries (Kafka mode: records behind the high watermarks) the updater may be behind while /readyz reports ready")
	fs.StringVar(&c.Backup.Dir, "backup.dir", "", "the only directory the admin backup action (recsys backup) may write under; without it backups are refused. Must not be inside the data dir")
	fs.DurationVar(&c.Shutdown.Timeout, "shutdown.timeout", 10*time.Second, "on SIGINT/SIGTERM, how long to drain requests and apply accepted events before exiting (a second signal exits at once)")
	fs.IntVar(&c.Limits.MaxInFlight, "limits.max-in-flight", 256, "requests in flight per listener; more are refused at once with 429 / RESOURCE_EXHAUSTED")
	fs.DurationVar(&c.Limits.RequestTimeout, "limits.request-timeout", 30*time.Second, "deadline of each REST and unary gRPC request")
	c.Log.bindFlags(fs)
	c.Kafka.bindFlags(fs)
}

func (l *logConfig) bindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&l.Level, "log.level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.Format, "log.format", "text", "log format: text or json")
}

func (c *config) validate() error {
	switch {
	case c.Data.Dir == "":
		return fmt.Errorf("data.dir: required")
	case c.Ingest.MaxBatch <= 0:
		return fmt.Errorf("ingest.max-batch: %d is not positive", c.Ingest.MaxBatch)
	case c.Ingest.MaxBodyBytes <= 0:
		return fmt.Errorf("ingest.max-body-bytes: %d is not positive", c.Ingest.MaxBodyBytes)
	case (c.TLS.Cert == "") != (c.TLS.Key == ""):
		return fmt.Errorf("tls.cert, tls.key: give both or neither")
	case c.TLS.ClientCA != "" && c.TLS.Cert == "":
		return fmt.Errorf("tls.client-ca: needs tls.cert and tls.key")
	case c.Readyz.MaxLag == 0:
		return fmt.Errorf("readyz.max-lag: must be positive")
	case c.Limits.MaxInFlight < 0:
		return fmt.Errorf("limits.max-in-flight: %d is negative", c.Limits.MaxInFlight)
	case c.Limits.RequestTimeout < 0:
		return fmt.Errorf("limits.request-timeout: %s is negative", c.Limits.RequestTimeout)
	case c.Flight.SnapshotMB < 0:
		return fmt.Errorf("flight.snapshot-mb: %d is negative", c.Flight.SnapshotMB)
	case c.Flight.MaxSpillBytes <= 0:
		return fmt.Errorf("flight.max-spill-bytes: %d is not positive", c.Flight.MaxSpillBytes)
	case c.Ingest.MinFreeBytes < 0:
		return fmt.Errorf("ingest.min-free-bytes: %d is negative", c.Ingest.MinFreeBytes)
	case c.Ingest.MaxFutureSkew <= 0:
		return fmt.Errorf("ingest.max-future-skew: %s is not positive", c.Ingest.MaxFutureSkew)
	case c.Ingest.AllowedLateness <= 0:
		return fmt.Errorf("ingest.allowed-lateness: %s is not positive", c.Ingest.AllowedLateness)
	case c.Shutdown.Timeout <= 0:
		return fmt.Errorf("shutdown.timeout: %s is not positive", c.Shutdown.Timeout)
	case c.Demo.Events <= 0:
		return fmt.Errorf("demo.events: %d is not positive", c.Demo.Events)
	case c.Demo.Enabled && len(c.Load.Files) > 0:
		return fmt.Errorf("demo, load: give one or the other")
	case c.Load.Format != "auto" && c.Load.Format != "taobao" && c.Load.Format != "jsonl":
		return fmt.Errorf("load.format: %q is not auto, taobao or jsonl", c.Load.Format)
	}
	if err := checkProcsPerCore(c.Runtime.ProcsPerCore); err != nil {
		return err
	}
	if err := c.Store.validate(); err != nil {
		return err
	}
	if err := c.Kafka.validate(); err != nil {
		return err
	}
	return c.Log.validate()
}

func (l *logConfig) validate() error {
	if _, err := l.level(); err != nil {
		return err
	}
	if l.Format != "text" && l.Format != "json" {
		return fmt.Errorf("log.format: %q is neither text nor json", l.Format)
	}
	return nil
}

func (l *logConfig) level() (slog.Level, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		return 0, fmt.Errorf("log.level: %q is not debug, info, warn or error", l.Level)
	}
	return lvl, nil
}

func (l *logConfig) logger() *slog.Logger {
	lvl, _ := l.level()
	opts := &slog.HandlerOptions{Level: lvl}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
