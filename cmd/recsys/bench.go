package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/serving"
	"github.com/streamrec/recsys/updater/datadir"
	"github.com/streamrec/recsys/updater/synth"
)

type benchOpts struct {
	events        int
	batch         int
	clients       int
	duration      time.Duration
	dir           string
	cpuprof       string
	applyProf     string
	applyOnly     bool
	checkpoint    time.Duration
	windowCacheMB int64
	memoryLimit   byteSize
	readProf      string
	readTrace     string
	featProf      string
	formats       []string
	soak          bool
	soakDays      int
	applyRuns     int
	progress      string
	procsPerCore  int
}

// storeConfig is serve's default store configuration with the bench's
// clock and state flags.
func (o *benchOpts) storeConfig(clock string) storeConfig {
	c := defaultStoreConfig()
	c.Clock = clock
	c.State.CheckpointInterval, c.State.WindowCacheMB, c.State.MemoryLimit = o.checkpoint, o.windowCacheMB, o.memoryLimit
	return c
}

func benchCmd() *cobra.Command {
	var o benchOpts
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure embedded ingest events/s and features:get latency under concurrent load",
		Example: `  recsys bench
  recsys bench --events 200000 --duration 2s --cpuprofile ingest.pprof
  recsys bench --soak --events 2000000 --soak.days 7`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.events <= 0 || o.batch <= 0 || o.clients <= 0 || o.duration <= 0 || o.soakDays <= 0 {
				return usageError{fmt.Errorf("events, batch, clients, duration and soak.days must be positive")}
			}
			if o.applyRuns < 0 {
				return usageError{fmt.Errorf("apply-runs: %d is negative", o.applyRuns)}
			}
			if err := checkProgress(o.progress); err != nil {
				return usageError{err}
			}
			if o.readProf != "" && o.featProf != "" {
				return usageError{fmt.Errorf("cpuprofile-reads and cpuprofile-features: one CPU profile at a time")}
			}
			for _, f := range o.formats {
				if f != "rows" && f != "columns" {
					return usageError{fmt.Errorf("read-formats: %q is not rows or columns", f)}
				}
			}
			if err := setBenchProcs(o.procsPerCore); err != nil {
				return err
			}
			if o.soak {
				if !cmd.Flags().Changed("events") {
					o.events = 10_000_000
				}
				return soak(cmd.Context(), &o)
			}
			return bench(cmd.Context(), &o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.events, "events", 1_000_000, "generated events to ingest")
	f.IntVar(&o.batch, "batch", 10_000, "events per ingest batch")
	f.IntVar(&o.clients, "clients", 8, "concurrent clients of the read benchmark")
	f.DurationVar(&o.duration, "duration", 3*time.Second, "length of each read scenario")
	f.StringVar(&o.dir, "dir", "", "data dir to use (default: a temporary one, removed afterwards)")
	f.StringVar(&o.cpuprof, "cpuprofile", "", "write a CPU profile of the ingest phase to this file")
	f.DurationVar(&o.checkpoint, "state.checkpoint-interval", featurestore.DefaultCheckpointInterval, "the stores' checkpoint interval (serve's flag)")
	f.Int64Var(&o.windowCacheMB, "state.window-cache-mb", 256, "the stores' materialized window state of online reads, MiB; 0: none (serve's flag)")
	f.Var(&o.memoryLimit, "state.memory-limit", "the process's memory budget, such as 2GiB; 0: none (serve's flag)")
	f.BoolVar(&o.applyOnly, "apply-only", false, "run the state-engine benchmark alone (--apply-runs times), not the ingest and read scenarios")
	f.StringVar(&o.applyProf, "cpuprofile-apply", "", "write a CPU profile of the first state-engine run to this file")
	f.StringVar(&o.readProf, "cpuprofile-reads", "", "write a CPU profile of the read phase to this file")
	f.StringVar(&o.readTrace, "trace-reads", "", "write an execution trace (go tool trace) of the read phase to this file")
	f.StringVar(&o.featProf, "cpuprofile-features", "", "write a CPU profile of the features:get scenarios alone to this file")
	f.StringSliceVar(&o.formats, "read-formats", []string{"rows", "columns"}, "features:get answer shapes to measure: rows, columns")
	f.BoolVar(&o.soak, "soak", false, "instead: stream --events (default 10M here) over --soak.days of event time on the event clock and print bytes on disk per simulated day")
	f.IntVar(&o.soakDays, "soak.days", 30, "simulated days of the soak")
	f.IntVar(&o.applyRuns, "apply-runs", 3, "runs of the state-engine benchmark (the events applied straight to a fresh store; the median is printed; 0 skips it)")
	bindBenchProcs(f, &o.procsPerCore)
	bindProgress(f, &o.progress)
	return cmd
}

// benchDir returns the data dir of a benchmark: o.dir, or a temporary one
// that cleanup removes.
func benchDir(o *benchOpts, prefix string) (dir string, cleanup func(), err error) {
	if o.dir != "" {
		return o.dir, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	return tmp, func() { _ = os.RemoveAll(tmp) }, nil
}

func benchLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func bench(ctx context.Context, o *benchOpts) error {
	logger := benchLogger()
	dir, cleanup, err := benchDir(o, "recsys-bench-")
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Printf("machine: %d cores (GOMAXPROCS %d), %s %s/%s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)

	// Generate first so that generation does not count as ingest time.
	evs, gcfg, err := benchEvents(o.events)
	if err != nil {
		return err
	}
	if o.applyRuns > 0 {
		if err := benchApply(ctx, o, evs); err != nil {
			return err
		}
	}
	if o.applyOnly {
		return nil
	}

	eng, err := openDataDir(dir, o.storeConfig("wall"), ingestConfig{lateness: time.Hour, futureSkew: 5 * time.Minute}, logger, nil, nil)
	if err != nil {
		return err
	}
	defer eng.Close()
	uctx, stopUpd := context.WithCancel(ctx)
	updDone := make(chan error, 1)
	go func() { updDone <- eng.Updater.Run(uctx) }()
	stopIngestProfile, err := startProfile(o.cpuprof)
	if err != nil {
		stopUpd()
		return err
	}
	start := time.Now()
	bar := newProgress(o.progress, "bench: ingest", "events", int64(len(evs)))
	for i := 0; i < len(evs); i += o.batch {
		res, err := eng.Updater.Ingest(ctx, evs[i:min(i+o.batch, len(evs))], nil)
		if err != nil {
			stopUpd()
			bar.Finish()
			return err
		}
		bar.Set(int64(eng.Store.AppliedOffset()), 0)
		if len(res.Rejected) > 0 {
			stopUpd()
			return fmt.Errorf("bench: event rejected: %s", res.Rejected[0].Reason)
		}
	}
	durable := time.Since(start)
	bar.Describe("bench: apply")
	stopBar := every(200*time.Millisecond, func() { bar.Set(int64(eng.Store.AppliedOffset()), 0) })
	err = eng.Updater.WaitApplied(ctx, eng.Log.End())
	stopBar()
	bar.Finish()
	if err != nil {
		stopUpd()
		return err
	}
	applied := time.Since(start)
	stopIngestProfile()
	fmt.Printf("ingest, embedded log (%d events, batches of %d, %d users, %d items):\n", len(evs), o.batch, gcfg.Users, gcfg.Items)
	fmt.Printf("  durable (fsynced): %8.0f events/s (%s)\n", float64(len(evs))/durable.Seconds(), durable.Round(time.Millisecond))
	fmt.Printf("  applied (readable): %7.0f events/s (%s), full default feature set (%d user, %d item features)\n",
		float64(len(evs))/applied.Seconds(), applied.Round(time.Millisecond), len(featurestore.UserView.Features), len(featurestore.ItemView.Features))
	if err := eng.Store.Flush(); err != nil {
		stopUpd()
		return err
	}
	st := eng.Store.Stats()
	state, logBytes := dirBytes(filepath.Join(dir, "state")), dirBytes(filepath.Join(dir, "log"))
	fmt.Printf("  on disk: state %.1f MiB, log %.1f MiB; %d active users + %d active items: %.0f state bytes per entity\n",
		float64(state)/(1<<20), float64(logBytes)/(1<<20), st.Users, st.Items, float64(state)/float64(st.Users+st.Items))
	printDedup(eng.Store.DedupStats())

	srv := serving.New(eng.Store, eng.Models, eng.Updater, serving.Options{Logger: logger})
	handler, err := srv.HTTPHandler(ctx)
	if err != nil {
		stopUpd()
		return err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stopUpd()
		return err
	}
	hsrv := &http.Server{Handler: handler}
	go func() { _ = hsrv.Serve(hl) }()
	defer hsrv.Close()
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stopUpd()
		return err
	}
	gsrv := grpc.NewServer()
	recsysv1.RegisterFeatureServiceServer(gsrv, srv)
	go func() { _ = gsrv.Serve(gl) }()
	defer gsrv.Stop()
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		stopUpd()
		return err
	}
	defer conn.Close()
	gc := recsysv1.NewFeatureServiceClient(conn)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.clients}}
	url := "http://" + hl.Addr().String() + "/v1/features:get"

	stopReadProfile, err := startProfile(o.readProf)
	if err != nil {
		stopUpd()
		return err
	}
	defer stopReadProfile()
	stopReadTrace, err := startTrace(o.readTrace)
	if err != nil {
		stopUpd()
		return err
	}
	defer stopReadTrace()
	stopFeatProfile, err := startProfile(o.featProf)
	if err != nil {
		stopUpd()
		return err
	}
	defer stopFeatProfile() // on errors; stopped below after the scenarios
	stopIngest := startIngest(ctx, eng, evs)
	fmt.Printf("features:get of every item_features feature (%d), closed-loop clients in this process, %s per scenario (items of random events), while ingest runs at %d events/s;\n",
		len(featurestore.ItemView.Features), o.duration, ingestRate)
	fmt.Printf("  bytes per entity of the answers (REST: the body; gRPC: the message), averaged over 5 requests:\n")
	randomItems := func(r *rand.Rand, n int) []string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = evs[r.IntN(len(evs))].ItemId
		}
		return ids
	}
	readStart := time.Now()
	winBefore := eng.Store.WindowStateStats()
	for _, n := range []int{1, 100, 500} {
		type scenario struct {
			name string
			// call makes one request; with size it returns the answer's bytes.
			call func(r *rand.Rand, size bool) (int, error)
		}
		var scenarios []scenario
		for _, format := range o.formats {
			suffix, reqFormat := "", ""
			if format == "columns" {
				suffix, reqFormat = " columns", "columns"
			}
			rest := func(r *rand.Rand, _ bool) (int, error) {
				req := map[string]any{"view": "item_features", "ids": randomItems(r, n)}
				if reqFormat != "" {
					req["format"] = reqFormat
				}
				body, _ := json.Marshal(req)
				return bodySize(hc.Post(url, "application/json", bytes.NewReader(body)))
			}
			grpcCall := func(r *rand.Rand, size bool) (int, error) {
				resp, err := gc.GetFeatures(ctx, &recsysv1.GetFeaturesRequest{View: "item_features", Ids: randomItems(r, n), Format: reqFormat})
				if err != nil || !size {
					return 0, err
				}
				return proto.Size(resp), nil
			}
			scenarios = append(scenarios, scenario{"REST" + suffix, rest}, scenario{"gRPC" + suffix, grpcCall})
		}
		for _, sc := range scenarios {
			sampled := 0
			for i := range 5 {
				b, err := sc.call(rand.New(rand.NewPCG(uint64(i), 11)), true)
				if err != nil {
					_, _, _ = stopIngest()
					stopUpd()
					return fmt.Errorf("features:get %s: %w", sc.name, err)
				}
				sampled += b
			}
			perEntity := float64(sampled) / float64(5*n)
			for _, clients := range []int{1, o.clients} {
				lat, errs, el := loadGen(clients, o.duration, func(r *rand.Rand) error { _, err := sc.call(r, false); return err })
				fmt.Printf("  %-12s %3d ids, %2d clients: %7.0f req/s  p50 %6.2f ms  p99 %6.2f ms  p999 %6.2f ms  %6.0f B/entity  (%d requests, %d errors)\n",
					sc.name, n, clients, float64(len(lat))/el.Seconds(), pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999), perEntity, len(lat), errs)
			}
		}
	}
	stopFeatProfile()
	ingested, lagMax, err := stopIngest()
	if err != nil {
		stopUpd()
		return err
	}
	fmt.Printf("  ingest during the scenarios: %.0f events/s, largest apply lag seen %d events\n", float64(ingested)/time.Since(readStart).Seconds(), lagMax)
	printWindowState(winBefore, eng.Store.WindowStateStats())
	if err := benchRecommend(ctx, eng, hc, "http://"+hl.Addr().String(), evs, o); err != nil {
		stopUpd()
		return err
	}
	stopUpd()
	return <-updDone
}

// ingestRate is the steady ingest of the read scenarios, events/s.
const ingestRate = 10_000

// startIngest ingests events into eng at a steady ingestRate (with event
// times of now, so that they pass the watermark) until the returned stop
// is called, which returns the events ingested, the largest apply lag
// seen and the first error.
func startIngest(ctx context.Context, eng *datadir.Dir, evs []*recsysv1.Event) (stop func() (ingested, lagMax int, err error)) {
	const tick = 50 * time.Millisecond
	perTick := ingestRate * int(tick) / int(time.Second)
	ictx, cancel := context.WithCancel(ctx)
	var ingested, lagMax int
	ingestErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		r := rand.New(rand.NewPCG(3, 3))
		for {
			select {
			case <-ictx.Done():
				ingestErr <- nil
				return
			case <-t.C:
			}
			batch := make([]*recsysv1.Event, perTick)
			now := time.Now().UnixMilli()
			for i := range batch {
				src := evs[r.IntN(len(evs))]
				batch[i] = &recsysv1.Event{UserId: src.UserId, ItemId: src.ItemId, CategoryId: src.CategoryId, Behavior: src.Behavior, Ts: now}
			}
			if _, err := eng.Updater.Ingest(ictx, batch, nil); err != nil {
				if ictx.Err() != nil {
					ingestErr <- nil
				} else {
					ingestErr <- err
				}
				return
			}
			ingested += len(batch)
			lagMax = max(lagMax, int(eng.Log.End()-eng.Store.AppliedOffset()))
		}
	}()
	var once sync.Once
	var err error
	return func() (int, int, error) {
		once.Do(func() {
			cancel()
			err = <-ingestErr
		})
		return ingested, lagMax, err
	}
}

// benchRecommend measures REST recommendations of random users while
// events are ingested concurrently at a steady ingestRate.
func benchRecommend(ctx context.Context, eng *datadir.Dir, hc *http.Client, base string, evs []*recsysv1.Event, o *benchOpts) error {
	stopIngest := startIngest(ctx, eng, evs)
	defer func() { _, _, _ = stopIngest() }()
	fmt.Printf("recommendations (k=20, full method), REST, closed-loop clients, %s per scenario, while ingest runs at %d events/s:\n", o.duration, ingestRate)
	call := func(r *rand.Rand) error {
		u := evs[r.IntN(len(evs))].UserId
		return okResponse(hc.Get(base + "/v1/users/" + u + "/recommendations?k=20"))
	}
	start := time.Now()
	caches := cacheLookups(eng)
	for _, clients := range []int{1, 4} {
		lat, errs, el := loadGen(clients, o.duration, call)
		fmt.Printf("  %d clients: %7.0f req/s  p50 %6.2f ms  p99 %6.2f ms  p999 %6.2f ms  (%d requests, %d errors)\n",
			clients, float64(len(lat))/el.Seconds(), pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999), len(lat), errs)
	}
	// Open loop: requests start on schedule whether or not the earlier ones
	// have answered, and each latency counts from its scheduled start, so a
	// stall shows in the percentiles instead of slowing the load down.
	for _, rps := range []int{100, 1000} {
		lat, errs, late, el := openLoop(rps, o.duration, maxInFlight, call)
		fmt.Printf("  open loop, offered %4d req/s: %7.0f answered/s  p50 %6.2f ms  p99 %6.2f ms  p999 %6.2f ms  (%d requests, %d errors, %d not started: %d in flight)\n",
			rps, float64(len(lat))/el.Seconds(), pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999), len(lat), errs, late, maxInFlight)
	}
	ingested, lagMax, err := stopIngest()
	if err != nil {
		return err
	}
	fmt.Printf("  ingest during the scenarios: %.0f events/s, largest apply lag seen %d events\n", float64(ingested)/time.Since(start).Seconds(), lagMax)
	printCacheHits(caches, cacheLookups(eng))
	return nil
}

// cacheLookups returns the record caches' lookup counts by name.
func cacheLookups(eng *datadir.Dir) map[string][2]int64 {
	out := make(map[string][2]int64)
	for _, st := range append(eng.Store.CacheStats(), eng.Models.CacheStats()...) {
		out[st.Name] = [2]int64{st.Hits, st.Misses}
	}
	return out
}

// printCacheHits prints the readers' caches' hit ratios between two
// cacheLookups.
func printCacheHits(before, after map[string][2]int64) {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(after)) {
		if !strings.HasSuffix(name, "_reads") {
			continue
		}
		h, m := after[name][0]-before[name][0], after[name][1]-before[name][1]
		if h+m > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f%% of %d", name, 100*float64(h)/float64(h+m), h+m))
		}
	}
	fmt.Printf("  readers' cache hits: %s\n", strings.Join(parts, ", "))
}

// printWindowState prints how the scenarios between before and after read
// the materialized window state.
func printWindowState(before, after featurestore.WindowStateStats) {
	h, m := after.Hits-before.Hits, after.Misses-before.Misses
	if h+m == 0 {
		return
	}
	fmt.Printf("  window state: %.1f%% of %d entity reads hit, %d entries built by readers, %d updated by the writer; %d entries, %.1f MiB\n",
		100*float64(h)/float64(h+m), h+m, after.Builds-before.Builds, after.Updates-before.Updates, after.Entries, float64(after.Bytes)/(1<<20))
}

// startProfile starts a CPU profile into path ("" profiles nothing) and
// returns the function that stops it.
func startProfile(path string) (stop func(), err error) {
	return startRecording(path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startTrace starts an execution trace into path ("" traces nothing) and
// returns the function that stops it.
func startTrace(path string) (stop func(), err error) {
	return startRecording(path, trace.Start, trace.Stop)
}

// startRecording starts a recorder (a CPU profile, a trace) into a new
// file at path, or nothing for "", and returns the function that stops it
// and closes the file, once.
func startRecording(path string, start func(io.Writer) error, stopRec func()) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return sync.OnceFunc(func() { stopRec(); _ = f.Close() }), nil
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// soak streams o.events generated events spread over o.soakDays days of
// event time through the embedded path, on the event clock, and prints the
// bytes on disk, the process's resident memory and Go heap at the end of
// every simulated day: with a TTL they level off instead of growing with
// the stream. The day's own rate shows whether applying slows down as the
// state grows; events/s is the run's average.
func soak(ctx context.Context, o *benchOpts) error {
	logger := benchLogger()
	dir, cleanup, err := benchDir(o, "recsys-soak-")
	if err != nil {
		return err
	}
	defer cleanup()
	gcfg := synth.Config{Seed: 7, Events: o.events, Users: 100_000, Items: 200_000, Categories: 2_000,
		Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Span: time.Duration(o.soakDays) * 24 * time.Hour}
	gen, err := synth.New(gcfg)
	if err != nil {
		return err
	}
	bar := newProgress(o.progress, "soak", "events", int64(o.events))
	defer bar.Finish()
	eng, err := openDataDir(dir, o.storeConfig("event"), ingestConfig{lateness: time.Hour, futureSkew: 5 * time.Minute}, logger, nil, nil)
	if err != nil {
		return err
	}
	defer eng.Close()
	uctx, stopUpd := context.WithCancel(ctx)
	defer stopUpd()
	updDone := make(chan error, 1)
	go func() { updDone <- eng.Updater.Run(uctx) }()
	fmt.Printf("soak: %d events over %d days of event time, %d users, %d items, TTL %s, %d cores\n",
		o.events, o.soakDays, gcfg.Users, gcfg.Items, featurestore.FormatDuration(featurestore.UserView.TTL), runtime.NumCPU())
	fmt.Println("  day   events     state MiB   log MiB   users    items    events/s  day's events/s  RSS MiB  heap MiB  dedup filter KiB  dedup keys MiB")
	start := time.Now()
	day := gcfg.Start.UnixMilli() / 86_400_000
	total := 0
	lastT, lastN := start, 0 // the previous report's
	batch := make([]*recsysv1.Event, 0, o.batch)
	report := func() error {
		if err := eng.Updater.WaitApplied(ctx, eng.Log.End()); err != nil {
			return err
		}
		if err := eng.Store.Flush(); err != nil {
			return err
		}
		st, dd := eng.Store.Stats(), eng.Store.DedupStats()
		now := time.Now()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms) // once a simulated day
		fmt.Printf("  %3d %9d %11.1f %9.1f %8d %8d %10.0f %15.0f %8.0f %9.0f %17.0f %15.1f\n", day-gcfg.Start.UnixMilli()/86_400_000+1, total,
			float64(dirBytes(filepath.Join(dir, "state")))/(1<<20), float64(dirBytes(filepath.Join(dir, "log")))/(1<<20),
			st.Users, st.Items, float64(total)/now.Sub(start).Seconds(), float64(total-lastN)/now.Sub(lastT).Seconds(),
			float64(residentBytes())/(1<<20), float64(ms.HeapInuse)/(1<<20),
			float64(dd.DerivedBytes+dd.ClientBytes)/(1<<10), float64(dd.DerivedDiskBytes+dd.ClientDiskBytes)/(1<<20))
		lastT, lastN = now, total
		return nil
	}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		res, err := eng.Updater.Ingest(ctx, batch, nil)
		if err != nil {
			return err
		}
		total += res.Accepted
		bar.Add(int64(len(batch)))
		batch = batch[:0]
		return nil
	}
	for ev, ok := gen.Next(); ok; ev, ok = gen.Next() {
		if d := ev.TS / 86_400_000; d != day {
			if err := flush(); err != nil {
				return err
			}
			if err := report(); err != nil {
				return err
			}
			day = d
		}
		batch = append(batch, &recsysv1.Event{UserId: ev.UserID, ItemId: ev.ItemID, CategoryId: ev.CategoryID, Behavior: ev.Behavior, Ts: ev.TS})
		if len(batch) == o.batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if err := report(); err != nil {
		return err
	}
	stopUpd()
	return <-updDone
}

// loadGen runs call from clients goroutines for d and returns the
// latencies of the successful calls, the error count and the elapsed time.
func loadGen(clients int, d time.Duration, call func(*rand.Rand) error) ([]time.Duration, int, time.Duration) {
	var mu sync.Mutex
	var all []time.Duration
	errs := 0
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 7))
			var lat []time.Duration
			nerr := 0
			for time.Now().Before(deadline) {
				t := time.Now()
				if err := call(r); err != nil {
					nerr++
					continue
				}
				lat = append(lat, time.Since(t))
			}
			mu.Lock()
			all = append(all, lat...)
			errs += nerr
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, errs, time.Since(start)
}

// pct returns the q-quantile of lat in milliseconds.
// maxInFlight bounds the open-loop requests in flight: past it a
// scheduled request is not started (and counted), so that a stalled
// server cannot make the generator grow without bound.
const maxInFlight = 512

// openLoop offers rate requests per second for d, each started at its
// scheduled time on its own goroutine (at most inFlight at once), and
// returns the latencies of the answered ones measured from their
// scheduled start, the errors, the requests not started and the time
// until the last answer.
func openLoop(rate int, d time.Duration, inFlight int, call func(*rand.Rand) error) ([]time.Duration, int, int, time.Duration) {
	var mu sync.Mutex
	var lat []time.Duration
	errs, late := 0, 0
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	n := int(int64(rate) * int64(d) / int64(time.Second))
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		select {
		case sem <- struct{}{}:
		default:
			late++
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := call(rand.New(rand.NewPCG(uint64(i), 13)))
			took := time.Since(at)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				return
			}
			lat = append(lat, took)
		}()
	}
	wg.Wait()
	return lat, errs, late, time.Since(start)
}

func pct(lat []time.Duration, q float64) float64 {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	i := min(int(q*float64(len(lat))), len(lat)-1)
	return float64(lat[i].Microseconds()) / 1000
}

// printDedup prints what deduplication holds: the derived ids in memory
// (the lateness plus one to two hours of event time) with their filter
// bytes per id, the client ids (kept for the dedup horizon), and the keys
// on disk.
func printDedup(d featurestore.DedupStats) {
	per := func(b, n uint64) float64 {
		if n == 0 {
			return 0
		}
		return float64(b) / float64(n)
	}
	fmt.Printf("  dedup: %d derived ids in memory (%d hours of event time): %.2f filter bytes per id, %.1f bytes of keys on disk per id; %d client ids: %.2f filter bytes per id\n",
		d.DerivedIDs, d.Hours, per(d.DerivedBytes, d.DerivedIDs), per(d.DerivedDiskBytes, d.DerivedIDs), d.ClientIDs, per(d.ClientBytes, d.ClientIDs))
}

// residentBytes is the process's resident set size from /proc/self/statm
// (Linux), or its peak (getrusage) where that cannot be read.
func residentBytes() int64 {
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		var size, resident int64
		if _, err := fmt.Sscan(string(b), &size, &resident); err == nil {
			return resident * int64(os.Getpagesize())
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss * 1024
}
