package eval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
)

// The methods, in report order. The store's methods are its single
// candidate sources and the full system; the baselines are computed here
// from the evaluation's own exact histories.
const (
	MethodPopular       = recommend.MethodPopular
	MethodRecentPopular = recommend.MethodRecentPopular
	MethodItem2Item     = recommend.MethodItem2Item
	MethodMF            = recommend.MethodMF
	MethodRecent        = "recent"  // the user's own items, newest first (re-engagement only)
	MethodItemKNN       = "itemknn" // item-kNN cosine, rebuilt every Rebuild of event time
	MethodALS           = "als"     // implicit ALS, rebuilt every Rebuild, users folded in
	MethodFull          = recommend.MethodFull
	MethodFullFrozen    = "full_frozen" // full with the models frozen at the end of the warm-up
)

// Methods lists every method in report order.
var Methods = []string{MethodPopular, MethodRecentPopular, MethodItem2Item, MethodMF,
	MethodRecent, MethodItemKNN, MethodALS, MethodFull, MethodFullFrozen}

// isStoreMethod reports whether the method asks a store.
func isStoreMethod(m string) bool {
	return m != MethodRecent && m != MethodItemKNN && m != MethodALS
}

// DelayedMethod is the name of full served from a store that lags the
// replay by d (see Options.Delays): "full@1h". Delay 0 is full itself.
func DelayedMethod(d time.Duration) string {
	if d <= 0 {
		return MethodFull
	}
	return MethodFull + "@" + FormatDelay(d)
}

// FormatDelay writes d without zero trailing units: 1s, 1m, 1h30m, 24h.
func FormatDelay(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Options configure a run.
type Options struct {
	// Warmup is the share of the time span (0.1% to 99.9% quantile of
	// event times) ingested before evaluation starts, in [0, 1).
	Warmup float64
	// Ks are the list lengths reported, ascending; the first is the one
	// of the paired differences and the per-day figures.
	Ks []int
	// ViewSample is the share of view events evaluated as view targets.
	ViewSample float64
	// Bootstrap is the number of resamples of the 95% intervals.
	Bootstrap int
	// Seed seeds the view sample and the bootstrap.
	Seed uint64
	// Methods are the methods evaluated (nil: all), in any order.
	Methods []string
	// Delays are the lags of the freshness curve (--model-delay). For
	// each delay d > 0 a store of its own, method full@d, is fed each
	// event only once the replay has reached a target at least d newer:
	// a target at time t is served from the whole store (features,
	// models, seen sets, its clock) as it was after the events up to
	// t − d. It is asked exactly like full, in every variant, on the same
	// targets. Delay 0 is full itself.
	Delays []time.Duration
	// Models configure the stores' models.
	Models models.Options
	// Baselines configure recent, itemknn and als.
	Baselines BaselineOptions
	// Dir is where the temporary stores go ("" for the system's temp dir).
	Dir string
	// Logger receives the stores' logs (nil: discarded).
	Logger *slog.Logger
	// Progress, if set, is called every few hundred events with the
	// events done and the total.
	Progress func(done, total int)
}

// Validate checks the options; errors name the field as the CLI flag.
func (o *Options) Validate() error {
	if o.Warmup < 0 || o.Warmup >= 1 || math.IsNaN(o.Warmup) {
		return fmt.Errorf("warmup: %v is not in [0, 1)", o.Warmup)
	}
	if len(o.Ks) == 0 {
		return errors.New("k: at least one list length is needed")
	}
	for _, k := range o.Ks {
		if k <= 0 || k > 1000 {
			return fmt.Errorf("k: %d is not a whole number in [1, 1000]", k)
		}
	}
	if o.ViewSample < 0 || o.ViewSample > 1 || math.IsNaN(o.ViewSample) {
		return fmt.Errorf("view-sample: %v is not in [0, 1]", o.ViewSample)
	}
	if o.Bootstrap < 0 || o.Bootstrap > 100000 {
		return fmt.Errorf("bootstrap: %d is not in [0, 100000]", o.Bootstrap)
	}
	for _, m := range o.Methods {
		if !slices.Contains(Methods, m) {
			return fmt.Errorf("methods: %q is not a method (%s)", m, strings.Join(Methods, ", "))
		}
	}
	for _, d := range o.Delays {
		if d < 0 || d > maxDelay {
			return fmt.Errorf("model-delay: %s is not in [0, %s]", FormatDelay(d), FormatDelay(maxDelay))
		}
		if d%time.Millisecond != 0 {
			return fmt.Errorf("model-delay: %s is not a whole number of milliseconds", FormatDelay(d))
		}
	}
	return nil
}

// maxDelay bounds Options.Delays (a year of event time).
const maxDelay = 365 * 24 * time.Hour

// Report is the result of a run. Its JSON form is `recsys eval --json`.
type Report struct {
	Discovery *VariantReport `json:"discovery"`
	// Reengagement drops the items the user bought from every method's
	// list (the server's default, exclude_purchased=true);
	// ReengagementKeepPurchased keeps them in every method's list
	// (exclude_purchased=false). Both have the same targets, of which
	// RepurchaseTargets are on an item the user had already bought.
	Reengagement              *VariantReport `json:"reengagement"`
	ReengagementKeepPurchased *VariantReport `json:"reengagement_keep_purchased"`
	RepurchaseTargets         int            `json:"repurchase_targets"`
	Views                     struct {
		Discovery    *VariantReport `json:"discovery"`
		Reengagement *VariantReport `json:"reengagement"`
	} `json:"views"`
	Events    int     `json:"events"`
	Users     int     `json:"users"`
	Items     int     `json:"items"`
	WarmupEnd string  `json:"warmup_end"`
	Seconds   float64 `json:"seconds"`
	// RankerAUC is the online ranker's rolling AUC at the end of the
	// replay; null when its window lacks either class (or no store ran).
	RankerAUC     *float64 `json:"ranker_auc"`
	RankerLogLoss *float64 `json:"ranker_log_loss"`
	// RankerWeights are the published ranker weights at the end.
	RankerWeights map[string]float64 `json:"ranker_weights"`
	// Baselines are the hyperparameters the baselines ran with.
	Baselines BaselineReport `json:"baselines"`
	// Freshness is the freshness curve (Options.Delays); null without
	// delays.
	Freshness *FreshnessReport `json:"freshness"`
}

// BaselineReport is BaselineOptions in JSON.
type BaselineReport struct {
	RebuildHours  float64 `json:"rebuild_hours"`
	History       int     `json:"history"`
	KNNNeighbors  int     `json:"knn_neighbors"`
	ALSFactors    int     `json:"als_factors"`
	ALSIterations int     `json:"als_iterations"`
	ALSReg        float64 `json:"als_reg"`
	ALSAlpha      float64 `json:"als_alpha"`
	ALSCGSteps    int     `json:"als_cg_steps"`
	Builds        int     `json:"builds"`
}

// Run replays evs (sorted by event time; see SortByTime) through a live
// store, a store whose models freeze after the warm-up, and the baselines,
// asking before each target event is ingested for the user's top K under
// every method.
func Run(ctx context.Context, evs []featurestore.Event, o Options) (*Report, error) {
	start := time.Now()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, errors.New("eval: no events")
	}
	o.Baselines.EnsureDefaults()
	ks := slices.Clone(o.Ks)
	slices.Sort(ks)
	ks = slices.Compact(ks)
	maxK := ks[len(ks)-1]
	methods := Methods
	if o.Methods != nil {
		methods = nil
		for _, m := range Methods {
			if slices.Contains(o.Methods, m) {
				methods = append(methods, m)
			}
		}
	}
	delays := slices.Clone(o.Delays)
	slices.Sort(delays)
	delays = slices.Compact(delays)
	r := &runner{o: &o, evs: evs, maxK: maxK, hist: newHistories(),
		knn: &itemKNN{o: &o.Baselines}, als: &als{o: &o.Baselines}}
	for _, d := range delays {
		if d > 0 {
			r.delayed = append(r.delayed, &delayedStore{delay: d.Milliseconds(), method: DelayedMethod(d)})
		}
	}
	for _, ds := range r.delayed {
		methods = append(slices.Clip(methods), ds.method)
	}
	r.methods = methods
	for _, m := range methods {
		if m != MethodRecent {
			r.discMethods = append(r.discMethods, m)
		}
		switch m {
		case MethodItemKNN, MethodALS:
			r.needBuild = true
		case MethodFullFrozen:
			r.needFrozen = true
		}
		if isStoreMethod(m) && !strings.HasPrefix(m, MethodFull+"@") {
			r.needLive = true
		}
	}
	if err := r.openStores(); err != nil {
		return nil, err
	}
	defer r.close()

	// The time span runs from the 0.1% to the 99.9% quantile of event
	// times, so that a few stray timestamps (the Taobao sample has events
	// weeks before its nine days) do not move the end of the warm-up.
	first, last := evs[len(evs)/1000].TS, evs[len(evs)-1-len(evs)/1000].TS
	warmEnd := first + int64(o.Warmup*float64(last-first))
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	users := make(map[string]bool)
	var disc, reng, keep, vdisc, vreng []targetResult
	isFrozen := false
	for i := range evs {
		ev := &evs[i]
		users[ev.UserID] = true
		if ev.TS >= warmEnd {
			if !isFrozen {
				if err := r.flush(); err != nil {
					return nil, err
				}
				if r.frozen != nil {
					r.frozen.models.Freeze(true)
				}
				isFrozen = true
			}
			target := ev.Behavior != featurestore.BehaviorView
			view := !target && rng.Float64() < o.ViewSample
			if target || view {
				if err := r.flush(); err != nil {
					return nil, err
				}
				d, rr, kp, err := r.rank(i)
				if err != nil {
					return nil, err
				}
				day := time.UnixMilli(ev.TS).UTC().Format("2006-01-02")
				dc, rc := &disc, &reng
				if view {
					dc, rc = &vdisc, &vreng
				}
				if d != nil {
					*dc = append(*dc, targetResult{day, d})
				}
				*rc = append(*rc, targetResult{day, rr})
				if !view {
					keep = append(keep, targetResult{day, kp})
				}
			}
		}
		if err := r.ingest(ev); err != nil {
			return nil, err
		}
		if i%512 == 511 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if o.Progress != nil {
				o.Progress(i+1, len(evs))
			}
		}
	}
	if err := r.flush(); err != nil {
		return nil, err
	}
	if o.Progress != nil {
		o.Progress(len(evs), len(evs))
	}
	rep := &Report{Events: len(evs), Users: len(users), Items: len(r.hist.names),
		WarmupEnd: time.UnixMilli(warmEnd).UTC().Format(time.RFC3339), RepurchaseTargets: r.repurchases}
	bs := rand.New(rand.NewPCG(o.Seed, 0xb007))
	rep.Discovery = summarize(disc, r.discMethods, ks, o.Bootstrap, bs)
	rep.Reengagement = summarize(reng, methods, ks, o.Bootstrap, bs)
	rep.Views.Discovery = summarize(vdisc, r.discMethods, ks, o.Bootstrap, bs)
	rep.Views.Reengagement = summarize(vreng, methods, ks, o.Bootstrap, bs)
	// Drawn after the others, so that adding the variant left their
	// resamples, and so their intervals, as they were.
	rep.ReengagementKeepPurchased = summarize(keep, methods, ks, o.Bootstrap, bs)
	if len(o.Delays) > 0 {
		rep.Freshness = freshness(rep, delays, ks[0])
	}
	b := o.Baselines
	rep.Baselines = BaselineReport{RebuildHours: b.Rebuild.Hours(), History: b.History, KNNNeighbors: b.KNNNeighbors,
		ALSFactors: b.ALSFactors, ALSIterations: b.ALSIterations, ALSReg: b.ALSReg, ALSAlpha: b.ALSAlpha,
		ALSCGSteps: b.ALSCGSteps, Builds: r.builds}
	rep.RankerWeights = map[string]float64{}
	if r.live != nil {
		ms, err := r.live.models.Info()
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.Name == "ranker" {
				rep.RankerAUC, rep.RankerLogLoss = finiteOrNil(m.AUC), finiteOrNil(m.LogLoss)
			}
		}
		names, weights, _ := r.live.models.RankerWeights()
		for i, n := range names {
			if i < len(weights) {
				rep.RankerWeights[n] = weights[i]
			}
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// SortByTime sorts events by event time, keeping the file order of equal
// times.
func SortByTime(evs []featurestore.Event) {
	slices.SortStableFunc(evs, func(a, b featurestore.Event) int {
		switch {
		case a.TS < b.TS:
			return -1
		case a.TS > b.TS:
			return 1
		}
		return 0
	})
}

// targetResult is the rank (1-based, 0 = not in the list) of the target
// under each method of its variant.
type targetResult struct {
	day   string
	ranks []int
}

type runner struct {
	o           *Options
	evs         []featurestore.Event
	maxK        int
	methods     []string // re-engagement, in report order
	discMethods []string // discovery: without recent
	needLive    bool
	needFrozen  bool
	needBuild   bool
	tmp         string
	live        *store
	frozen      *store
	delayed     []*delayedStore
	groups      []storeGroup
	pending     []featurestore.Entry
	off         uint64
	hist        *histories
	seen        map[string]map[string]int64 // user → item → newest touch
	knn         *itemKNN
	als         *als
	lastBuild   int64
	builds      int
	repurchases int
}

// store is one store of the evaluation with its models and recommender.
type store struct {
	*featurestore.Store
	models *models.Models
	rec    *recommend.Recommender
}

// storeGroup is a store and the methods asked of it, by index in
// runner.methods. The groups are asked concurrently (each store by one
// goroutine at a time).
type storeGroup struct {
	st      *store
	ds      *delayedStore // nil: fed before every target
	idx     []int
	methods []string // the store's method of each idx
}

// delayedStore is the store of a point of the freshness curve. It has
// applied evs[:next]; an event is applied once the replay reaches a
// target at least delay newer than it.
type delayedStore struct {
	delay  int64 // ms
	method string
	st     *store
	next   int
	batch  []featurestore.Entry
}

// catchUp applies the events before index i that are at least delay
// older than ts (the target's time), in time order.
func (ds *delayedStore) catchUp(evs []featurestore.Event, i int, ts int64) error {
	due := func() bool { return ds.next < i && evs[ds.next].TS <= ts-ds.delay }
	for due() {
		ds.batch = ds.batch[:0]
		for due() && len(ds.batch) < 4096 {
			ds.batch = append(ds.batch, featurestore.Entry{Offset: uint64(ds.next), Event: evs[ds.next]})
			ds.next++
		}
		if _, err := ds.st.Apply(uint64(ds.next), ds.batch); err != nil {
			return fmt.Errorf("eval: %s: %w", ds.method, err)
		}
	}
	return nil
}

func (r *runner) openStores() error {
	r.seen = make(map[string]map[string]int64)
	if !r.needLive && !r.needFrozen && len(r.delayed) == 0 {
		return nil
	}
	tmp, err := os.MkdirTemp(r.o.Dir, "recsys-eval-")
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	r.tmp = tmp
	logger := r.o.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// The block cache holds the whole working set of a recommendation
	// (item, neighbour and model records): at 64 MiB three reads in four
	// missed it on dense histories, and the run took twice as long. Pebble
	// allocates it as it fills.
	open := func(name string) (*store, error) {
		// MF candidates from the exact scan: the index is built in the
		// background, so its timing (and the candidates) would vary run
		// to run.
		mo := r.o.Models
		mo.MFIndexMin = -1
		m, err := models.New(mo)
		if err != nil {
			return nil, fmt.Errorf("eval: %w", err)
		}
		st, err := featurestore.Open(filepath.Join(tmp, name), featurestore.Options{Logger: logger, Clock: "event", CacheBytes: 512 << 20, Learner: m})
		if err != nil {
			return nil, err
		}
		return &store{Store: st, models: m, rec: recommend.New(st, m)}, nil
	}
	if r.needLive {
		if r.live, err = open("live"); err != nil {
			return err
		}
		g := storeGroup{st: r.live}
		for mi, m := range r.methods {
			if isStoreMethod(m) && m != MethodFullFrozen && !strings.HasPrefix(m, MethodFull+"@") {
				g.idx, g.methods = append(g.idx, mi), append(g.methods, m)
			}
		}
		r.groups = append(r.groups, g)
	}
	if r.needFrozen {
		if r.frozen, err = open("frozen"); err != nil {
			return err
		}
		r.groups = append(r.groups, storeGroup{st: r.frozen, idx: []int{slices.Index(r.methods, MethodFullFrozen)}, methods: []string{MethodFull}})
	}
	for _, ds := range r.delayed {
		if ds.st, err = open(fmt.Sprintf("delay-%d", ds.delay)); err != nil {
			return err
		}
		r.groups = append(r.groups, storeGroup{st: ds.st, ds: ds, idx: []int{slices.Index(r.methods, ds.method)}, methods: []string{MethodFull}})
	}
	return nil
}

func (r *runner) close() {
	for _, g := range r.groups {
		g.st.Close()
	}
	if r.tmp != "" {
		os.RemoveAll(r.tmp)
	}
}

// stores are the stores fed before every target.
func (r *runner) stores() []*store {
	var out []*store
	for _, st := range []*store{r.live, r.frozen} {
		if st != nil {
			out = append(out, st)
		}
	}
	return out
}

func (r *runner) flush() error {
	if len(r.pending) == 0 {
		return nil
	}
	sts := r.stores()
	err := parallel(len(sts), func(j int) error {
		_, err := sts[j].Apply(r.off, r.pending)
		return err
	})
	if err != nil {
		return err
	}
	r.pending = r.pending[:0]
	return nil
}

// parallel calls fn(0), …, fn(n−1) concurrently (fn(0) on the calling
// goroutine) and returns the error of the first that failed, by index.
func parallel(n int, fn func(j int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for j := 1; j < n; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[j] = fn(j)
		}()
	}
	if n > 0 {
		errs[0] = fn(0)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) ingest(ev *featurestore.Event) error {
	r.hist.add(ev)
	mine := r.seen[ev.UserID]
	if mine == nil {
		mine = make(map[string]int64)
		r.seen[ev.UserID] = mine
	}
	mine[ev.ItemID] = max(mine[ev.ItemID], ev.TS)
	if r.live == nil && r.frozen == nil {
		return nil
	}
	r.pending = append(r.pending, featurestore.Entry{Offset: r.off, Event: *ev})
	r.off++
	if len(r.pending) >= 4096 {
		return r.flush()
	}
	return nil
}

// rank asks every method for the user's top K before evs[i] is ingested
// and returns the target's rank per discovery method (nil when the user
// had already touched the item: no discovery target), per re-engagement
// method with the user's purchases dropped from every list, and per
// re-engagement method with them kept.
func (r *runner) rank(i int) (disc, reng, keep []int, err error) {
	ev := &r.evs[i]
	mine := r.seen[ev.UserID]
	_, touched := mine[ev.ItemID]
	isDisc := !touched
	if r.needBuild && (r.builds == 0 || ev.TS >= r.lastBuild+r.o.Baselines.Rebuild.Milliseconds()) {
		r.knn.build(r.hist)
		r.als.build(r.hist)
		r.lastBuild = ev.TS
		r.builds++
	}
	u := r.hist.users[ev.UserID]
	target, known := r.hist.itemIDs[ev.ItemID]
	// Without a purchase in the exact history no store holds one either,
	// and keeping purchases changes no list.
	bought := u != nil && len(u.bought) > 0
	if bought && known && u.bought[target] {
		r.repurchases++
	}
	n := len(r.methods)
	disc, reng, keep = make([]int, n), make([]int, n), make([]int, n)
	rankOf := func(list []int32) int {
		if !known {
			return 0
		}
		if i := slices.Index(list, target); i >= 0 {
			return i + 1
		}
		return 0
	}
	baselines := func() error {
		if u == nil {
			return nil
		}
		seenItem := func(it int32) bool {
			_, ok := u.pos[it]
			return ok
		}
		boughtItem := func(it int32) bool { return u.bought[it] }
		for mi, m := range r.methods {
			switch m {
			case MethodRecent:
				var all, kept []int32
				for _, it := range u.newest(r.maxK + len(u.bought)) {
					if len(all) < r.maxK {
						all = append(all, it.item)
					}
					if len(kept) < r.maxK && !u.bought[it.item] {
						kept = append(kept, it.item)
					}
				}
				reng[mi], keep[mi] = rankOf(kept), rankOf(all)
			case MethodItemKNN, MethodALS:
				var sc []scoredItem
				if m == MethodItemKNN {
					sc = r.knn.scores(u, len(r.hist.names))
				} else {
					sc = r.als.scores(u)
				}
				reng[mi] = rankOf(topK(sc, r.maxK, boughtItem))
				keep[mi] = reng[mi]
				if bought {
					keep[mi] = rankOf(topK(sc, r.maxK, nil))
				}
				if isDisc {
					disc[mi] = rankOf(topK(sc, r.maxK, seenItem))
				}
			}
		}
		return nil
	}
	// Every method of every store is asked on a goroutine of its own, and
	// each variant of a method too (concurrent reads of a store are safe,
	// as the server's are; one job per method and variant balances the
	// two cores better than one per method). A delayed store has one
	// method, so one goroutine asks it every variant, and feeds it first:
	// it is the only one to use it.
	const (
		askDisc = 1 << iota
		askReng
		askKeep
	)
	variants := askReng // the variants this target is asked in
	if isDisc {
		variants |= askDisc
	}
	if bought {
		variants |= askKeep
	}
	type job struct{ g, j, asks int }
	var jobs []job
	excludes := make([]map[string]bool, len(r.groups))
	for gi, g := range r.groups {
		if isDisc && g.ds == nil {
			excludes[gi] = unseenBy(g.st, mine)
		}
		for j := range g.idx {
			if g.ds != nil {
				jobs = append(jobs, job{gi, j, variants})
				continue
			}
			for _, v := range []int{askDisc, askReng, askKeep} {
				if variants&v != 0 {
					jobs = append(jobs, job{gi, j, v})
				}
			}
		}
	}
	asks := func(jb job) error {
		g, j, mi := r.groups[jb.g], jb.j, r.groups[jb.g].idx[jb.j]
		exclude := excludes[jb.g]
		if g.ds != nil {
			if err := g.ds.catchUp(r.evs, i, ev.TS); err != nil {
				return err
			}
			if isDisc {
				exclude = unseenBy(g.st, mine)
			}
		}
		ask := func(discovery, keepPurchased bool) (int, error) {
			o := recommend.Options{K: r.maxK, Method: g.methods[j], KeepPurchased: keepPurchased}
			if discovery {
				o.ExcludeSeen, o.Exclude = true, exclude
			}
			recs, err := g.st.rec.Recommend(ev.UserID, o)
			if err != nil {
				return 0, fmt.Errorf("eval: %s for user %s: %w", r.methods[mi], ev.UserID, err)
			}
			rank := 0
			for i, rec := range recs {
				if _, ok := mine[rec.ItemID]; ok && discovery {
					return 0, fmt.Errorf("eval: %s for user %s with exclude_seen returned %s, which the user touched", r.methods[mi], ev.UserID, rec.ItemID)
				}
				if rec.ItemID == ev.ItemID && rank == 0 {
					rank = i + 1
				}
			}
			return rank, nil
		}
		var err error
		if jb.asks&askDisc != 0 {
			if disc[mi], err = ask(true, false); err != nil {
				return err
			}
		}
		if jb.asks&askReng != 0 {
			if reng[mi], err = ask(false, false); err != nil {
				return err
			}
		}
		if jb.asks&askKeep != 0 {
			if keep[mi], err = ask(false, true); err != nil {
				return err
			}
		}
		return nil
	}
	err = parallel(len(jobs)+1, func(j int) error {
		if j == 0 {
			return baselines()
		}
		return asks(jobs[j-1])
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if !bought {
		// Keeping purchases changes no list: the re-engagement ranks.
		for _, g := range r.groups {
			for _, mi := range g.idx {
				keep[mi] = reng[mi]
			}
		}
	}
	if !isDisc {
		disc = nil
	} else {
		d := disc[:0]
		for mi, m := range r.methods {
			if m != MethodRecent {
				d = append(d, disc[mi])
			}
		}
		disc = d
	}
	return disc, reng, keep, nil
}

// unseenBy returns what a discovery ask of st must exclude besides the
// store's own seen set (exclude_seen, as the server does) so that the
// list holds none of the user's touched items: those touched before the
// seen set's TTL, those touched after the store's clock (a delayed store
// has not applied them yet), or all of them when more were touched
// within the TTL than the seen set keeps.
func unseenBy(st *store, mine map[string]int64) map[string]bool {
	now := st.Now()
	since := now - st.SeenTTL()
	old, recent := make(map[string]bool), 0
	for item, ts := range mine {
		if ts <= since || ts > now {
			old[item] = true
		} else {
			recent++
		}
	}
	if recent > st.SeenLimit() {
		for item := range mine {
			old[item] = true
		}
	}
	return old
}

// finiteOrNil is f, or nil when f is NaN or infinite (JSON has neither).
func finiteOrNil(f float64) *float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}
