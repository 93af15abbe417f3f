package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/eval"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/eventfile"
)

type evalOptions struct {
	format     string
	sample     float64
	cpuprofile string
	json       bool
	progress   string
	run        eval.Options
}

func evalCmd() *cobra.Command {
	var o evalOptions
	var ks, methods, delays string
	var mc modelConfig
	cmd := &cobra.Command{
		Use:   "eval --format taobao FILE [--warmup 0.5] [--k 10,20] [--model-delay 1s,1m,1h,24h] [--json]",
		Short: "Prequential evaluation: replay events in time order, asking for each target's top K before it is ingested",
		Long: `eval replays a behavior file in event-time order through the same store,
models and recommender that serve. After the warm-up share of the time span,
for every target event (cart, fav, purchase; views separately, on a sample)
it asks for the user's top K before the event is ingested, then ingests it.

Variants: discovery (items the user already interacted with are excluded, and
targets on them skipped) and re-engagement (they are allowed), the latter
twice: with the items the user bought dropped from every method's list (the
server's default, exclude_purchased=true) and kept (exclude_purchased=false),
on the same targets.
Methods: popular, recent_popular (1 h), item2item, mf (the store's single
sources), the baselines recent (the user's own items, newest first;
re-engagement only), itemknn (item-kNN cosine) and als (implicit ALS with
fold-in of users), both rebuilt every 24 h of event time, then full (every
source, ranked by the online ranker) and full_frozen (full with the models
frozen at the end of the warm-up). Metrics: HR@K, NDCG@K and MRR with 95%
bootstrap intervals, and the paired difference full − each method.

--model-delay d1,d2,… measures the freshness curve. For each delay d a store
of its own (method full@d) is fed each event only once the replay has reached
a target at least d newer: a target at time t is served by the whole store
as it was after the events up to t − d — features, models, seen sets and its
clock alike, not the models alone. It is asked exactly like full, in every
variant, on the same targets (discovery still excludes every item the user
touched up to the target: what the lagged seen set lacks is excluded
explicitly). Delay 0 is full. Each delay costs about one more full store.`,
		Example: `  recsys eval --format taobao ../shared/data/taobao/UserBehavior-users-84k.csv.gz
  recsys eval --format taobao events.csv.gz --sample 0.1 --methods recent,itemknn,als,full --json
  recsys eval --format taobao events.csv.gz --methods full --model-delay 1s,1m,1h,24h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.format != "taobao" {
				return usageError{fmt.Errorf("format: %q is not supported (taobao)", o.format)}
			}
			if o.sample <= 0 || o.sample > 1 {
				return usageError{fmt.Errorf("sample: %v is not in (0, 1]", o.sample)}
			}
			o.run.Ks = nil
			for _, f := range strings.Split(ks, ",") {
				k, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || k <= 0 || k > 1000 {
					return usageError{fmt.Errorf("k: %q is not a whole number in [1, 1000]", f)}
				}
				o.run.Ks = append(o.run.Ks, k)
			}
			slices.Sort(o.run.Ks)
			o.run.Ks = slices.Compact(o.run.Ks)
			o.run.Methods = nil
			if methods != "" && methods != "all" {
				for _, m := range strings.Split(methods, ",") {
					o.run.Methods = append(o.run.Methods, strings.TrimSpace(m))
				}
			}
			o.run.Delays = nil
			if delays != "" {
				for _, f := range strings.Split(delays, ",") {
					d, err := time.ParseDuration(strings.TrimSpace(f))
					if err != nil {
						return usageError{fmt.Errorf("model-delay: %q is not a duration such as 1s, 1m, 1h or 24h", f)}
					}
					o.run.Delays = append(o.run.Delays, d)
				}
			}
			if err := mc.validate(); err != nil {
				return usageError{err}
			}
			o.run.Models = mc.options()
			if err := o.run.Validate(); err != nil {
				return usageError{err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			evs, rejected, err := loadTaobao(args[0], o.sample)
			if err != nil {
				return err
			}
			if len(evs) == 0 {
				return fmt.Errorf("%s: no valid events", args[0])
			}
			if o.progress != "off" {
				bar := newProgress(o.progress, "eval", "events", int64(len(evs)))
				defer bar.Finish()
				o.run.Progress = func(done, _ int) { bar.Set(int64(done), 0) }
			}
			// The replay allocates gigabytes of short-lived records; a
			// heap four times the live one means fewer collections.
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(400)
			}
			stopProfile, err := startProfile(o.cpuprofile)
			if err != nil {
				return err
			}
			rep, err := eval.Run(ctx, evs, o.run)
			stopProfile()
			if err != nil {
				return err
			}
			if o.json {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					*eval.Report
					Rejected int `json:"rejected"`
				}{rep, rejected})
			}
			rep.WriteText(cmd.OutOrStdout(), o.run.Ks, rejected)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "taobao", "input format: taobao (CSV user,item,category,behavior,unix_seconds; gzip allowed)")
	f.Float64Var(&o.run.Warmup, "warmup", 0.5, "share of the time span (0.1% to 99.9% quantile of event times) ingested before evaluation starts")
	f.StringVar(&ks, "k", "10,20", "list lengths to report, comma-separated")
	f.StringVar(&methods, "methods", "all", "methods to evaluate, comma-separated ("+strings.Join(eval.Methods, ", ")+"), or all")
	f.StringVar(&delays, "model-delay", "", "delays of the freshness curve, comma-separated (such as 1s,1m,1h,24h): full served from the whole store as it was each delay before the target")
	f.BoolVar(&o.json, "json", false, "print the report as JSON")
	f.Float64Var(&o.sample, "sample", 1, "share of users kept (by a hash of the user id), for quick runs")
	f.Float64Var(&o.run.ViewSample, "view-sample", 0.02, "share of view events evaluated as view targets (reported separately)")
	f.IntVar(&o.run.Bootstrap, "bootstrap", 1000, "bootstrap resamples for the 95% intervals")
	f.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the evaluation (after the file is read) to this file")
	f.Uint64Var(&o.run.Seed, "seed", 1, "seed of the view sample and the bootstrap")
	bindProgress(f, &o.progress)
	f.DurationVar(&o.run.Baselines.Rebuild, "baselines.rebuild", 24*time.Hour, "event time between two rebuilds of the itemknn and als baselines")
	f.IntVar(&o.run.Baselines.History, "baselines.history", 200, "newest distinct items per user the baselines learn from and score with")
	f.IntVar(&o.run.Baselines.KNNNeighbors, "baselines.knn-neighbors", 100, "neighbours per item of itemknn")
	f.IntVar(&o.run.Baselines.ALSFactors, "baselines.als-factors", 32, "latent factors of als")
	f.IntVar(&o.run.Baselines.ALSIterations, "baselines.als-iterations", 10, "alternating iterations of als per rebuild")
	f.Float64Var(&o.run.Baselines.ALSReg, "baselines.als-reg", 1, "L2 penalty of als")
	f.Float64Var(&o.run.Baselines.ALSAlpha, "baselines.als-alpha", 40, "confidence scale of als (1 + alpha·log(1 + weight))")
	mc.bindFlags(f)
	return cmd
}

// loadTaobao reads a Taobao CSV file, keeps the sample of users and sorts
// the events by event time.
func loadTaobao(path string, sample float64) ([]featurestore.Event, int, error) {
	var evs []featurestore.Event
	rejected := 0
	err := eventfile.Read(path, eventfile.Taobao, func(pev *recsysv1.Event, ferr *updater.FieldError) error {
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
	eval.SortByTime(evs)
	return evs, rejected, nil
}

// hash32 is 32-bit FNV-1a: --sample keeps the users whose hash / 2^32 is
// below the share.
func hash32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
