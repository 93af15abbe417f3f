package main

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/synth"
)

// applyBatch is the apply loop's batch size when the log is far ahead
// (updater.Run reads at most this many entries at a time).
const applyBatch = 16384

// applyRun is one measured run of the apply benchmark.
type applyRun struct {
	rate        float64 // events per wall second
	cpuPerEv    time.Duration
	entityBytes float64 // state bytes on disk per active user and item, after a flush
	userBytes   float64 // of which per active user
	itemBytes   float64 // and per active item
	users       int64
	items       int64
	stateBytes  int64
}

// benchApply applies the same generated events straight to fresh stores
// (no log, no ingest) runs times, and prints the medians: what the state
// engine alone sustains with the full default features and all models.
func benchApply(ctx context.Context, o *benchOpts, evs []*recsysv1.Event) error {
	entries := make([]featurestore.Entry, 0, len(evs))
	now := time.Now()
	for i, pe := range evs {
		ev, ferr := updater.Normalize(pe, now, 5*time.Minute)
		if ferr != nil {
			return fmt.Errorf("bench: generated event %d: %s", i, ferr)
		}
		entries = append(entries, featurestore.Entry{Offset: uint64(i), Event: ev})
	}
	var runs []applyRun
	for r := range o.applyRuns {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir, cleanup, err := benchDir(&benchOpts{}, "recsys-bench-apply-")
		if err != nil {
			return err
		}
		run, err := applyOnce(filepath.Join(dir, "state"), entries, o, r)
		cleanup()
		if err != nil {
			return err
		}
		runs = append(runs, run)
	}
	med := func(f func(applyRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	last := runs[len(runs)-1]
	fmt.Printf("state engine, %d generated events applied straight to the store (batches of %d, median of %d runs):\n", len(entries), applyBatch, len(runs))
	fmt.Printf("  apply: %.0f events/s (shards 1, cores %d)\n", med(func(r applyRun) float64 { return r.rate }), runtime.NumCPU())
	fmt.Printf("  cpu per event: %.1f µs (process CPU, Pebble's background work included)\n", med(func(r applyRun) float64 { return float64(r.cpuPerEv) / 1e3 }))
	fmt.Printf("  state on disk: %.1f MiB for %d active users + %d active items: %.0f bytes per entity\n",
		float64(last.stateBytes)/(1<<20), last.users, last.items, med(func(r applyRun) float64 { return r.entityBytes }))
	fmt.Printf("  state bytes per active user: %.0f, per active item: %.0f (Pebble's estimates of their key ranges: records, models, tiles, seen, purchases / hourly counts, popularity, neighbours; the rest is dedup and metadata)\n",
		med(func(r applyRun) float64 { return r.userBytes }), med(func(r applyRun) float64 { return r.itemBytes }))
	fmt.Printf("  peak RSS of the process so far: %.0f MiB\n", float64(ru.Maxrss)/1024)
	return nil
}

func applyOnce(dir string, entries []featurestore.Entry, o *benchOpts, run int) (applyRun, error) {
	so := featurestore.Options{Logger: benchLogger(), Clock: "wall", CheckpointInterval: o.checkpoint}
	var mo models.Options
	if err := applyMemoryLimit(int64(o.memoryLimit), &so, &mo, benchLogger()); err != nil {
		return applyRun{}, err
	}
	mods, err := models.New(mo)
	if err != nil {
		return applyRun{}, err
	}
	so.Learner = mods
	st, err := featurestore.Open(dir, so)
	if err != nil {
		return applyRun{}, err
	}
	defer st.Close()
	bar := newProgress(o.progress, fmt.Sprintf("bench: apply run %d/%d", run+1, o.applyRuns), "events", int64(len(entries)))
	prof := ""
	if run == 0 {
		prof = o.applyProf
	}
	stopProfile, err := startProfile(prof)
	if err != nil {
		return applyRun{}, err
	}
	defer stopProfile()
	cpu0 := processCPU()
	start := time.Now()
	for i := 0; i < len(entries); i += applyBatch {
		j := min(i+applyBatch, len(entries))
		if _, err := st.Apply(uint64(j), entries[i:j]); err != nil {
			bar.Finish()
			return applyRun{}, err
		}
		bar.Set(int64(j), 0)
	}
	wall := time.Since(start)
	cpu := processCPU() - cpu0
	stopProfile()
	bar.Finish()
	if err := st.Flush(); err != nil {
		return applyRun{}, err
	}
	s := st.Stats()
	bytes := dirBytes(dir)
	mu, mi := models.KeyPrefixes()
	du, err := st.DiskUsage(mu, mi)
	if err != nil {
		return applyRun{}, err
	}
	return applyRun{
		userBytes: float64(du.Users) / float64(max(1, s.Users)), itemBytes: float64(du.Items) / float64(max(1, s.Items)),
		rate: float64(len(entries)) / wall.Seconds(), cpuPerEv: cpu / time.Duration(len(entries)),
		users: s.Users, items: s.Items, stateBytes: bytes, entityBytes: float64(bytes) / float64(max(1, s.Users+s.Items)),
	}, nil
}

// processCPU is the CPU time (user and system) the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchEvents generates the benchmark's events.
func benchEvents(n int) ([]*recsysv1.Event, synth.Config, error) {
	gcfg := synth.Config{Seed: 42, Events: n, Start: time.Now().Add(-7 * 24 * time.Hour), Span: 7 * 24 * time.Hour}
	gen, err := synth.New(gcfg)
	if err != nil {
		return nil, gcfg, err
	}
	gcfg.EnsureDefaults()
	evs := make([]*recsysv1.Event, 0, n)
	for ev, ok := gen.Next(); ok; ev, ok = gen.Next() {
		evs = append(evs, &recsysv1.Event{UserId: ev.UserID, ItemId: ev.ItemID, CategoryId: ev.CategoryID, Behavior: ev.Behavior, Ts: ev.TS})
	}
	return evs, gcfg, nil
}
