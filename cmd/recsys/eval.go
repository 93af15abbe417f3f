package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
)

type evalOptions struct {
	format     string
	warmup     float64
	ks         []int
	json       bool
	sample     float64
	viewSample float64
	bootstrap  int
	seed       uint64
	models     featurestore.ModelOptions
}

func evalCmd() *cobra.Command {
	var o evalOptions
	var ks string
	var mc modelConfig
	cmd := &cobra.Command{
		Use:   "eval --format taobao FILE [--warmup 0.5] [--k 10,20] [--json]",
		Short: "Prequential evaluation: replay events in time order, asking for each target's top K before it is ingested",
		Long: `eval replays a behavior file in event-time order through the same store,
models and recommender that serve. After the warm-up share of the time span,
for every target event (cart, fav, purchase; views separately, on a sample)
it asks for the user's top K before the event is ingested, then ingests it.

Variants: discovery (items the user already interacted with are excluded, and
targets on them skipped) and re-engagement (they are allowed).
Methods: popular, recent_popular (1 h), item2item, mf, full (every source,
ranked by the online ranker) and full_frozen (full with the models frozen at
the end of the warm-up). Metrics: HR@K, NDCG@K and MRR with 95% bootstrap
intervals.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.format != "taobao" {
				return usageError{fmt.Errorf("format: %q is not supported (taobao)", o.format)}
			}
			if o.warmup < 0 || o.warmup >= 1 {
				return usageError{fmt.Errorf("warmup: %v is not in [0, 1)", o.warmup)}
			}
			if o.sample <= 0 || o.sample > 1 {
				return usageError{fmt.Errorf("sample: %v is not in (0, 1]", o.sample)}
			}
			if o.viewSample < 0 || o.viewSample > 1 {
				return usageError{fmt.Errorf("view-sample: %v is not in [0, 1]", o.viewSample)}
			}
			o.ks = nil
			for _, f := range strings.Split(ks, ",") {
				k, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || k <= 0 || k > 1000 {
					return usageError{fmt.Errorf("k: %q is not a whole number in [1, 1000]", f)}
				}
				o.ks = append(o.ks, k)
			}
			if err := mc.validate(); err != nil {
				return usageError{err}
			}
			o.models = mc.options()
			slices.Sort(o.ks)
			o.ks = slices.Compact(o.ks)
			rep, err := runEval(args[0], &o, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if o.json {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printEval(cmd.OutOrStdout(), rep, o.ks)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "taobao", "input format: taobao (CSV user,item,category,behavior,unix_seconds; gzip allowed)")
	f.Float64Var(&o.warmup, "warmup", 0.5, "share of the time span (0.1% to 99.9% quantile of event times) ingested before evaluation starts")
	f.StringVar(&ks, "k", "10,20", "list lengths to report, comma-separated")
	f.BoolVar(&o.json, "json", false, "print the report as JSON")
	f.Float64Var(&o.sample, "sample", 1, "share of users kept (by a hash of the user id), for quick runs")
	f.Float64Var(&o.viewSample, "view-sample", 0.02, "share of view events evaluated as view targets (reported separately)")
	f.IntVar(&o.bootstrap, "bootstrap", 1000, "bootstrap resamples for the 95% intervals")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the view sample and the bootstrap")
	mc.bindFlags(f)
	return cmd
}

// evalMethods are the methods evaluated, in report order.
var evalMethods = []string{"popular", "recent_popular", "item2item", "mf", "full", "full_frozen"}

type variantReport struct {
	Targets int                           `json:"targets"`
	Methods map[string]map[string]float64 `json:"methods"`
	// Intervals holds, per method and metric, the 95% bootstrap interval.
	Intervals map[string]map[string][2]float64 `json:"intervals"`
	// VsFull holds, per method, the paired difference full − method in
	// NDCG@K (the smallest K): mean and 95% bootstrap interval over the
	// same resamples of targets. An interval above 0 means full is better.
	VsFull map[string]pairedDelta `json:"vs_full"`
	// ByDay is NDCG@K (the smallest K) per day of event time.
	ByDay []dayReport `json:"by_day"`
}

type pairedDelta struct {
	Metric string     `json:"metric"`
	Mean   float64    `json:"mean"`
	CI     [2]float64 `json:"ci"`
}

type dayReport struct {
	Day     string             `json:"day"`
	Targets int                `json:"targets"`
	NDCG    map[string]float64 `json:"ndcg"`
}

type evalReport struct {
	Discovery    *variantReport `json:"discovery"`
	Reengagement *variantReport `json:"reengagement"`
	Views        struct {
		Discovery    *variantReport `json:"discovery"`
		Reengagement *variantReport `json:"reengagement"`
	} `json:"views"`
	Events    int     `json:"events"`
	Rejected  int     `json:"rejected"`
	Users     int     `json:"users"`
	Items     int     `json:"items"`
	WarmupEnd string  `json:"warmup_end"`
	Seconds   float64 `json:"seconds"`
	// Ranker is the online ranker's rolling AUC at the end of the replay;
	// null when its window lacks either class.
	RankerAUC     *float64 `json:"ranker_auc"`
	RankerLogLoss *float64 `json:"ranker_log_loss"`
	// RankerWeights are the published ranker weights at the end.
	RankerWeights map[string]float64 `json:"ranker_weights"`
}

// targetResult is the rank (1-based, 0 = not in the list) of the target
// under each method.
type targetResult struct {
	day   string
	ranks []int
}

type collector struct{ results []targetResult }

func loadTaobao(path string, sample float64) ([]featurestore.Event, int, error) {
	var evs []featurestore.Event
	rejected := 0
	err := readEvents(path, "taobao", io.Discard, func(pev *recsysv1.Event, ferr *updater.FieldError) error {
		if ferr != nil {
			rejected++
			return nil
		}
		ev, ferr := updater.Normalize(pev, time.UnixMilli(pev.Ts), 0)
		if ferr != nil {
			rejected++
			return nil
		}
		if sample < 1 && float64(hash32(ev.UserID))/float64(1<<32) >= sample {
			return nil
		}
		evs = append(evs, ev)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	slices.SortStableFunc(evs, func(a, b featurestore.Event) int {
		switch {
		case a.TS < b.TS:
			return -1
		case a.TS > b.TS:
			return 1
		}
		return 0
	})
	return evs, rejected, nil
}

// finiteOrNil is f, or nil when f is NaN or infinite (JSON has neither).
func finiteOrNil(f float64) *float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}

func orNaN(f *float64) float64 {
	if f == nil {
		return math.NaN()
	}
	return *f
}

func hash32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func runEval(path string, o *evalOptions, progress io.Writer) (*evalReport, error) {
	start := time.Now()
	evs, rejected, err := loadTaobao(path, o.sample)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("%s: no valid events", path)
	}
	tmp, err := os.MkdirTemp("", "recsys-eval-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func(name string) (*featurestore.Store, error) {
		return featurestore.Open(filepath.Join(tmp, name), featurestore.Options{Logger: logger, Clock: "event", CacheBytes: 64 << 20, Models: o.models})
	}
	live, err := open("live")
	if err != nil {
		return nil, err
	}
	defer live.Close()
	frozen, err := open("frozen")
	if err != nil {
		return nil, err
	}
	defer frozen.Close()

	// The time span runs from the 0.1% to the 99.9% quantile of event
	// times, so that a few stray timestamps (the Taobao sample has events
	// weeks before its nine days) do not move the end of the warm-up.
	first, last := evs[len(evs)/1000].TS, evs[len(evs)-1-len(evs)/1000].TS
	warmEnd := first + int64(o.warmup*float64(last-first))
	maxK := o.ks[len(o.ks)-1]
	rng := rand.New(rand.NewPCG(o.seed, 0x5eed))

	var pending []featurestore.Entry
	var off uint64
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		for _, st := range []*featurestore.Store{live, frozen} {
			if _, err := st.Apply(off, pending); err != nil {
				return err
			}
		}
		pending = pending[:0]
		return nil
	}
	seen := make(map[string]map[string]bool)
	users := make(map[string]bool)
	items := make(map[string]bool)
	var disc, reng, vdisc, vreng collector
	isFrozen := false
	lastReport := time.Now()
	for i := range evs {
		ev := &evs[i]
		users[ev.UserID], items[ev.ItemID] = true, true
		if ev.TS >= warmEnd {
			if !isFrozen {
				if err := flush(); err != nil {
					return nil, err
				}
				frozen.FreezeModels(true)
				isFrozen = true
			}
			target := ev.Behavior != featurestore.BehaviorView
			view := !target && rng.Float64() < o.viewSample
			if target || view {
				if err := flush(); err != nil {
					return nil, err
				}
				mine := seen[ev.UserID]
				day := time.UnixMilli(ev.TS).UTC().Format("2006-01-02")
				dc, rc := &disc, &reng
				if view {
					dc, rc = &vdisc, &vreng
				}
				if !mine[ev.ItemID] {
					ranks, err := rankTarget(live, frozen, ev, maxK, mine)
					if err != nil {
						return nil, err
					}
					dc.results = append(dc.results, targetResult{day, ranks})
				}
				ranks, err := rankTarget(live, frozen, ev, maxK, nil)
				if err != nil {
					return nil, err
				}
				rc.results = append(rc.results, targetResult{day, ranks})
			}
		}
		if seen[ev.UserID] == nil {
			seen[ev.UserID] = make(map[string]bool)
		}
		seen[ev.UserID][ev.ItemID] = true
		pending = append(pending, featurestore.Entry{Offset: off, Event: *ev})
		off++
		if len(pending) >= 4096 {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		if progress != nil && time.Since(lastReport) > 10*time.Second {
			lastReport = time.Now()
			fmt.Fprintf(progress, "eval: %d/%d events, %d targets\n", i+1, len(evs), len(disc.results)+len(reng.results))
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	rep := &evalReport{Events: len(evs), Rejected: rejected, Users: len(users), Items: len(items),
		WarmupEnd: time.UnixMilli(warmEnd).UTC().Format(time.RFC3339)}
	bs := rand.New(rand.NewPCG(o.seed, 0xb007))
	rep.Discovery = summarize(disc.results, o.ks, maxK, o.bootstrap, bs)
	rep.Reengagement = summarize(reng.results, o.ks, maxK, o.bootstrap, bs)
	rep.Views.Discovery = summarize(vdisc.results, o.ks, maxK, o.bootstrap, bs)
	rep.Views.Reengagement = summarize(vreng.results, o.ks, maxK, o.bootstrap, bs)
	ms, err := live.Models()
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.Name == "ranker" {
			rep.RankerAUC, rep.RankerLogLoss = finiteOrNil(m.AUC), finiteOrNil(m.LogLoss)
		}
	}
	names, weights, _ := live.RankerWeights()
	rep.RankerWeights = make(map[string]float64, len(names))
	for i, n := range names {
		if i < len(weights) {
			rep.RankerWeights[n] = weights[i]
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// rankTarget asks every method for the user's top maxK, excluding the
// items in exclude (discovery) or nothing (re-engagement), and returns the
// target's 1-based rank in each list (0: absent).
func rankTarget(live, frozen *featurestore.Store, ev *featurestore.Event, maxK int, exclude map[string]bool) ([]int, error) {
	ranks := make([]int, len(evalMethods))
	for i, m := range evalMethods {
		st, method := live, m
		if m == "full_frozen" {
			st, method = frozen, featurestore.MethodFull
		}
		recs, err := st.Recommend(ev.UserID, featurestore.RecommendOptions{K: maxK, Exclude: exclude, ExcludeSeen: exclude != nil, Method: method})
		if err != nil {
			return nil, fmt.Errorf("%s for user %s: %w", m, ev.UserID, err)
		}
		for r, rec := range recs {
			if rec.ItemID == ev.ItemID {
				ranks[i] = r + 1
				break
			}
		}
	}
	return ranks, nil
}

func metricValue(name string, k, rank int) float64 {
	switch name {
	case "hr":
		if rank > 0 && rank <= k {
			return 1
		}
	case "ndcg":
		if rank > 0 && rank <= k {
			return 1 / math.Log2(float64(rank)+1)
		}
	case "mrr":
		if rank > 0 {
			return 1 / float64(rank)
		}
	}
	return 0
}

func summarize(results []targetResult, ks []int, maxK, resamples int, rng *rand.Rand) *variantReport {
	rep := &variantReport{Targets: len(results), Methods: make(map[string]map[string]float64), Intervals: make(map[string]map[string][2]float64)}
	n := len(results)
	type metricSpec struct {
		key  string
		name string
		k    int
	}
	var specs []metricSpec
	for _, k := range ks {
		specs = append(specs, metricSpec{fmt.Sprintf("hr@%d", k), "hr", k}, metricSpec{fmt.Sprintf("ndcg@%d", k), "ndcg", k})
	}
	specs = append(specs, metricSpec{"mrr", "mrr", maxK})
	// Resample target indexes once, shared by every method and metric, so
	// intervals of different methods come from the same resamples.
	idx := make([][]int, resamples)
	for r := range idx {
		idx[r] = make([]int, n)
		for j := range idx[r] {
			idx[r][j] = rng.IntN(max(n, 1))
		}
	}
	for mi, m := range evalMethods {
		rep.Methods[m] = make(map[string]float64)
		rep.Intervals[m] = make(map[string][2]float64)
		for _, sp := range specs {
			vals := make([]float64, n)
			var sum float64
			for j, r := range results {
				vals[j] = metricValue(sp.name, sp.k, r.ranks[mi])
				sum += vals[j]
			}
			if n == 0 {
				rep.Methods[m][sp.key] = 0
				rep.Intervals[m][sp.key] = [2]float64{0, 0}
				continue
			}
			rep.Methods[m][sp.key] = sum / float64(n)
			means := make([]float64, resamples)
			for r := range idx {
				var s float64
				for _, j := range idx[r] {
					s += vals[j]
				}
				means[r] = s / float64(n)
			}
			slices.Sort(means)
			if resamples > 0 {
				rep.Intervals[m][sp.key] = [2]float64{means[int(0.025*float64(resamples))], means[min(resamples-1, int(0.975*float64(resamples)))]}
			}
		}
	}
	rep.VsFull = make(map[string]pairedDelta)
	if full := slices.Index(evalMethods, "full"); n > 0 && resamples > 0 {
		key := fmt.Sprintf("ndcg@%d", ks[0])
		for mi, m := range evalMethods {
			if mi == full {
				continue
			}
			diff := make([]float64, n)
			var sum float64
			for j, r := range results {
				diff[j] = metricValue("ndcg", ks[0], r.ranks[full]) - metricValue("ndcg", ks[0], r.ranks[mi])
				sum += diff[j]
			}
			means := make([]float64, resamples)
			for r := range idx {
				var t float64
				for _, j := range idx[r] {
					t += diff[j]
				}
				means[r] = t / float64(n)
			}
			slices.Sort(means)
			rep.VsFull[m] = pairedDelta{Metric: key, Mean: sum / float64(n),
				CI: [2]float64{means[int(0.025*float64(resamples))], means[min(resamples-1, int(0.975*float64(resamples)))]}}
		}
	}
	byDay := make(map[string][]targetResult)
	for _, r := range results {
		byDay[r.day] = append(byDay[r.day], r)
	}
	days := make([]string, 0, len(byDay))
	for d := range byDay {
		days = append(days, d)
	}
	slices.Sort(days)
	for _, d := range days {
		dr := dayReport{Day: d, Targets: len(byDay[d]), NDCG: make(map[string]float64)}
		for mi, m := range evalMethods {
			var s float64
			for _, r := range byDay[d] {
				s += metricValue("ndcg", ks[0], r.ranks[mi])
			}
			dr.NDCG[m] = s / float64(len(byDay[d]))
		}
		rep.ByDay = append(rep.ByDay, dr)
	}
	return rep
}

func printEval(w io.Writer, rep *evalReport, ks []int) {
	fmt.Fprintf(w, "events %d (rejected %d), users %d, items %d; evaluation from %s; %.1f s; ranker rolling AUC %.4f, log loss %.4f\n",
		rep.Events, rep.Rejected, rep.Users, rep.Items, rep.WarmupEnd, rep.Seconds, orNaN(rep.RankerAUC), orNaN(rep.RankerLogLoss))
	names := make([]string, 0, len(rep.RankerWeights))
	for n := range rep.RankerWeights {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Fprint(w, "ranker weights:")
	for _, n := range names {
		fmt.Fprintf(w, " %s=%.3f", n, rep.RankerWeights[n])
	}
	fmt.Fprintln(w)
	for _, v := range []struct {
		name string
		r    *variantReport
	}{{"discovery", rep.Discovery}, {"re-engagement", rep.Reengagement}, {"views, discovery", rep.Views.Discovery}, {"views, re-engagement", rep.Views.Reengagement}} {
		fmt.Fprintf(w, "\n%s: %d targets\n", v.name, v.r.Targets)
		fmt.Fprintf(w, "  %-15s", "method")
		for _, k := range ks {
			fmt.Fprintf(w, " %-22s %-22s", fmt.Sprintf("HR@%d", k), fmt.Sprintf("NDCG@%d", k))
		}
		fmt.Fprintf(w, " %-22s\n", "MRR")
		for _, m := range evalMethods {
			fmt.Fprintf(w, "  %-15s", m)
			keys := []string{}
			for _, k := range ks {
				keys = append(keys, fmt.Sprintf("hr@%d", k), fmt.Sprintf("ndcg@%d", k))
			}
			keys = append(keys, "mrr")
			for _, key := range keys {
				ci := v.r.Intervals[m][key]
				fmt.Fprintf(w, " %-22s", fmt.Sprintf("%.4f [%.4f,%.4f]", v.r.Methods[m][key], ci[0], ci[1]))
			}
			fmt.Fprintln(w)
		}
		fmt.Fprint(w, "  full − method, paired:")
		for _, m := range evalMethods {
			if d, ok := v.r.VsFull[m]; ok {
				fmt.Fprintf(w, "  %s %+.4f [%+.4f,%+.4f]", m, d.Mean, d.CI[0], d.CI[1])
			}
		}
		fmt.Fprintf(w, " (%s)\n", fmt.Sprintf("NDCG@%d", ks[0]))
	}
}
