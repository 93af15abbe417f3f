package eval

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
)

func TestMetricValue(t *testing.T) {
	for _, tc := range []struct {
		name    string
		k, rank int
		want    float64
	}{
		{"hr", 10, 0, 0}, {"hr", 10, 1, 1}, {"hr", 10, 10, 1}, {"hr", 10, 11, 0},
		{"ndcg", 10, 1, 1}, {"ndcg", 10, 3, 0.5}, {"ndcg", 10, 7, 1.0 / 3}, {"ndcg", 5, 7, 0}, {"ndcg", 10, 0, 0},
		{"mrr", 10, 4, 0.25}, {"mrr", 10, 40, 0.025}, {"mrr", 10, 0, 0},
	} {
		if got := MetricValue(tc.name, tc.k, tc.rank); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("MetricValue(%s, %d, %d) = %v, want %v", tc.name, tc.k, tc.rank, got, tc.want)
		}
	}
}

func TestBootstrapInterval(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([]float64, 2000)
	for i := range vals {
		if rng.Float64() < 0.3 {
			vals[i] = 1
		}
	}
	bs := newBootstrap(len(vals), 1000, rand.New(rand.NewPCG(3, 4)))
	ci := bs.interval(vals)
	m := mean(vals)
	// The standard error of a proportion near 0.3 over 2000 targets is
	// about 0.0102; a 95% interval spans about ±1.96 of it.
	se := math.Sqrt(m * (1 - m) / float64(len(vals)))
	if !(ci[0] < m && m < ci[1]) {
		t.Fatalf("interval %v does not hold the mean %v", ci, m)
	}
	for i, want := range []float64{m - 1.96*se, m + 1.96*se} {
		if math.Abs(ci[i]-want) > 0.4*se {
			t.Errorf("interval edge %d = %.4f, want about %.4f", i, ci[i], want)
		}
	}
	if got := newBootstrap(len(vals), 1000, rand.New(rand.NewPCG(3, 4))).interval(vals); got != ci {
		t.Errorf("same seed gave %v, then %v", ci, got)
	}
	if got := bootstrap(nil).interval(vals); got != [2]float64{} {
		t.Errorf("no resamples: %v", got)
	}
}

func TestSummarizePaired(t *testing.T) {
	// full finds every target at rank 1, a at rank 3 half the time, b is
	// full itself: full − b is exactly 0, full − a is clearly positive.
	var results []targetResult
	for i := range 400 {
		a := 0
		if i%2 == 0 {
			a = 3
		}
		results = append(results, targetResult{fmt.Sprintf("2017-11-%02d", 25+i%3), []int{a, 1, 1}})
	}
	methods := []string{"a", "b", MethodFull}
	rep := summarize(results, methods, []int{10, 20}, 500, rand.New(rand.NewPCG(1, 1)))
	if rep.Targets != 400 {
		t.Fatalf("targets %d", rep.Targets)
	}
	if got := rep.Methods["a"]["ndcg@10"]; math.Abs(got-0.25) > 1e-12 {
		t.Errorf("ndcg@10 of a = %v, want 0.25", got)
	}
	if got := rep.Methods["a"]["mrr"]; math.Abs(got-1.0/6) > 1e-12 {
		t.Errorf("mrr of a = %v, want 1/6", got)
	}
	if d := rep.VsFull["b"]; d.Mean != 0 || d.CI != [2]float64{0, 0} {
		t.Errorf("full − b = %+v, want exactly 0", d)
	}
	if d := rep.VsFull["a"]; math.Abs(d.Mean-0.75) > 1e-12 || d.CI[0] <= 0.6 || d.CI[1] >= 0.9 {
		t.Errorf("full − a = %+v, want 0.75 with a tight interval", d)
	}
	if best, v := rep.Best("ndcg@10"); best != "b" || v != 1 {
		t.Errorf("best = %s %v, want b 1", best, v)
	}
	if len(rep.ByDay) != 3 || rep.ByDay[0].Day != "2017-11-25" || rep.ByDay[0].Targets != 134 {
		t.Errorf("by day: %+v", rep.ByDay)
	}
}

func TestTopScored(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := range 200 {
		n := rng.IntN(300)
		cands := make([]scoredItem, n)
		for i := range cands {
			// Few distinct scores, so ties are common.
			cands[i] = scoredItem{int32(rng.IntN(1000)), float32(rng.IntN(20))}
		}
		k := 1 + rng.IntN(30)
		skip := func(it int32) bool { return it%7 == 0 }
		want := slices.Clone(cands)
		want = slices.DeleteFunc(want, func(c scoredItem) bool { return skip(c.item) })
		slices.SortStableFunc(want, func(a, b scoredItem) int {
			if c := cmp.Compare(b.score, a.score); c != 0 {
				return c
			}
			return cmp.Compare(a.item, b.item)
		})
		want = want[:min(k, len(want))]
		got := topScored(cands, k, skip)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d (n %d, k %d): got %v, want %v", trial, n, k, got, want)
		}
	}
}

func ev(user, item string, b featurestore.Behavior, ts int64) featurestore.Event {
	return featurestore.Event{ID: fmt.Sprintf("%s-%s-%d", user, item, ts), UserID: user, ItemID: item, Behavior: b, TS: ts}
}

func TestHistoriesNewest(t *testing.T) {
	h := newHistories()
	for i, it := range []string{"a", "b", "c", "a", "d"} {
		e := ev("u", it, featurestore.BehaviorView, int64(i))
		h.add(&e)
	}
	e := ev("u", "b", featurestore.BehaviorPurchase, 9)
	h.add(&e)
	u := h.users["u"]
	var got []string
	for _, it := range u.newest(3) {
		got = append(got, h.names[it.item])
	}
	if !slices.Equal(got, []string{"b", "d", "a"}) {
		t.Fatalf("newest 3 = %v, want [b d a]", got)
	}
	if w := u.items[u.pos[h.itemIDs["b"]]].w; w != 5 {
		t.Errorf("weight of b = %v, want 1 + 4", w)
	}
	if len(u.newest(100)) != 4 {
		t.Errorf("distinct items: %d", len(u.newest(100)))
	}
}

func TestItemKNNCosine(t *testing.T) {
	// Users x: {a, b}, y: {a, b, c}, z: {c} with weight 1 each (strength
	// log 2). cos(a, b) = 2/(√2·√2) = 1; cos(a, c) = 1/(√2·√2) = 0.5.
	h := newHistories()
	for _, p := range [][2]string{{"x", "a"}, {"x", "b"}, {"y", "a"}, {"y", "b"}, {"y", "c"}, {"z", "c"}} {
		e := ev(p[0], p[1], featurestore.BehaviorView, 1)
		h.add(&e)
	}
	o := BaselineOptions{}
	o.EnsureDefaults()
	m := &itemKNN{o: &o}
	m.build(h)
	id := func(s string) int32 { return h.itemIDs[s] }
	nb := m.neighbors[id("a")]
	if len(nb) != 2 || nb[0].item != id("b") || math.Abs(float64(nb[0].score)-1) > 1e-6 ||
		nb[1].item != id("c") || math.Abs(float64(nb[1].score)-0.5) > 1e-6 {
		t.Fatalf("neighbours of a: %+v", nb)
	}
	// z has only c: b scores strength(1)·cos(c, b) = log 2 · 0.5, a the same.
	sc := m.scores(h.users["z"], len(h.names))
	got := topScored(sc, 10, nil)
	if len(got) != 2 || math.Abs(float64(got[0].score)-math.Log(2)*0.5) > 1e-6 {
		t.Fatalf("scores of z: %+v", got)
	}
}

func TestALSConjugateGradientMatchesExactSolve(t *testing.T) {
	o := BaselineOptions{ALSFactors: 8, ALSCGSteps: 8}
	o.EnsureDefaults()
	f := o.ALSFactors
	m := &als{o: &o}
	rng := rand.New(rand.NewPCG(5, 5))
	Y := make([]float64, 30*f)
	for i := range Y {
		Y[i] = rng.NormFloat64() * 0.3
	}
	R := [][]rating{{{2, 3}, {5, 1.5}, {17, 10}}, {{1, 0.5}}}
	X := make([]float64, len(R)*f)
	m.halfStep(X, Y, R)
	G := gramian(Y, f, o.ALSReg, nil)
	for row, rs := range R {
		A := slices.Clone(G)
		b := make([]float64, f)
		for _, rt := range rs {
			y := Y[int(rt.idx)*f : (int(rt.idx)+1)*f]
			for a := range f {
				b[a] += (1 + rt.c) * y[a]
				for k := range f {
					A[a*f+k] += rt.c * y[a] * y[k]
				}
			}
		}
		want := choleskySolve(A, b, f)
		for k := range f {
			if d := math.Abs(X[row*f+k] - want[k]); d > 1e-6 {
				t.Fatalf("row %d factor %d: CG %v, exact %v", row, k, X[row*f+k], want[k])
			}
		}
	}
}

// clusters are events of two groups of users, each group touching its own
// items, over three days.
func clusters() []featurestore.Event {
	var evs []featurestore.Event
	ts := time.Date(2017, 11, 25, 0, 0, 0, 0, time.UTC).UnixMilli()
	rng := rand.New(rand.NewPCG(11, 11))
	for step := range 3000 {
		g := rng.IntN(2)
		user := fmt.Sprintf("u%d-%d", g, rng.IntN(40))
		item := fmt.Sprintf("i%d-%d", g, rng.IntN(25))
		b := featurestore.BehaviorView
		if rng.IntN(6) == 0 {
			b = featurestore.BehaviorCart
		}
		evs = append(evs, ev(user, item, b, ts+int64(step)*86_400_000/1000))
	}
	return evs
}

func TestRunBaselines(t *testing.T) {
	evs := clusters()
	o := Options{Warmup: 0.5, Ks: []int{10}, Bootstrap: 100, Seed: 1,
		Methods: []string{MethodRecent, MethodItemKNN, MethodALS}}
	var calls int
	o.Progress = func(done, total int) { calls++ }
	rep, err := Run(context.Background(), evs, o)
	if err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Error("no progress reported")
	}
	if rep.Events != len(evs) || rep.Users != 80 || rep.Items != 50 {
		t.Errorf("events %d users %d items %d", rep.Events, rep.Users, rep.Items)
	}
	if _, ok := rep.Discovery.Methods[MethodRecent]; ok {
		t.Error("recent is reported in discovery")
	}
	if rep.Baselines.Builds < 2 {
		t.Errorf("builds %d: want a rebuild a day over 1.5 days", rep.Baselines.Builds)
	}
	// Within a cluster of 25 items every method should find targets far
	// above chance (10/50 = 0.2 hit rate at random over both clusters).
	for _, m := range []string{MethodRecent, MethodItemKNN, MethodALS} {
		if hr := rep.Reengagement.Methods[m]["hr@10"]; hr < 0.3 {
			t.Errorf("%s: re-engagement HR@10 %v", m, hr)
		}
	}
	for _, m := range []string{MethodItemKNN, MethodALS} {
		if hr := rep.Discovery.Methods[m]["hr@10"]; hr < 0.3 {
			t.Errorf("%s: discovery HR@10 %v", m, hr)
		}
	}
	again, err := Run(context.Background(), evs, Options{Warmup: 0.5, Ks: []int{10}, Bootstrap: 100, Seed: 1,
		Methods: []string{MethodRecent, MethodItemKNN, MethodALS}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(again.Reengagement.Methods) != fmt.Sprint(rep.Reengagement.Methods) {
		t.Error("two runs differ")
	}
}

func TestRunRecentExact(t *testing.T) {
	// recent's rank of a target is its position among the user's
	// distinct items, newest first.
	var evs []featurestore.Event
	for i, it := range []string{"a", "b", "c", "d", "b"} {
		evs = append(evs, ev("u", it, featurestore.BehaviorView, int64(1_500_000_000_000+i*1000)))
	}
	evs = append(evs, ev("u", "a", featurestore.BehaviorPurchase, 1_500_000_010_000))
	rep, err := Run(context.Background(), evs, Options{Warmup: 0.99, Ks: []int{10}, Methods: []string{MethodRecent}})
	if err != nil {
		t.Fatal(err)
	}
	// Newest first before the purchase: b, d, c, a: a is 4th.
	if rep.Reengagement.Targets != 1 || rep.Reengagement.Methods[MethodRecent]["mrr"] != 0.25 {
		t.Fatalf("re-engagement: %+v", rep.Reengagement)
	}
}

func TestRunWithStores(t *testing.T) {
	evs := clusters()[:1500]
	rep, err := Run(context.Background(), evs, Options{Warmup: 0.7, Ks: []int{10, 20}, Bootstrap: 50, Seed: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []*VariantReport{rep.Discovery, rep.Reengagement} {
		if v.Targets == 0 {
			t.Fatal("no targets")
		}
		for _, m := range v.methodOrder() {
			for key, x := range v.Methods[m] {
				ci := v.Intervals[m][key]
				if x < 0 || x > 1 || ci[0] > x || x > ci[1] {
					t.Errorf("%s %s = %v outside [0, 1] or its interval %v", m, key, x, ci)
				}
			}
		}
		if _, ok := v.VsFull[MethodALS]; !ok {
			t.Error("no paired difference full − als")
		}
	}
	if len(rep.Reengagement.Methods) != len(Methods) || len(rep.Discovery.Methods) != len(Methods)-1 {
		t.Errorf("methods: %d and %d", len(rep.Reengagement.Methods), len(rep.Discovery.Methods))
	}
	if rep.RankerAUC == nil {
		t.Error("no ranker AUC")
	}
}

func TestRunCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Run(ctx, clusters(), Options{Warmup: 0.5, Ks: []int{10}, Methods: []string{MethodRecent}})
	if err != context.Canceled {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		o     Options
		field string
	}{
		{Options{Warmup: 1, Ks: []int{10}}, "warmup"},
		{Options{Warmup: math.NaN(), Ks: []int{10}}, "warmup"},
		{Options{Ks: nil}, "k"},
		{Options{Ks: []int{0}}, "k"},
		{Options{Ks: []int{10}, ViewSample: 2}, "view-sample"},
		{Options{Ks: []int{10}, Methods: []string{"magic"}}, "methods"},
	} {
		err := tc.o.Validate()
		if err == nil || len(err.Error()) < len(tc.field) || err.Error()[:len(tc.field)+1] != tc.field+":" {
			t.Errorf("%+v: err %v, want one naming %s", tc.o, err, tc.field)
		}
	}
}

// Discovery asks go through the store's exclude_seen (the server's path)
// and fail the run if an answer names an item the user touched: a user
// with more items than the model history and the recent items hold, and
// items touched longer ago than the seen set's TTL (excluded by the
// evaluation itself), both leave no touched item in the answers.
func TestRunDiscoveryUsesSeenSet(t *testing.T) {
	var evs []featurestore.Event
	ts := time.Date(2017, 11, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	add := func(user, item string, b featurestore.Behavior) {
		evs = append(evs, ev(user, item, b, ts))
		ts += 60_000
	}
	add("heavy", "ancient", featurestore.BehaviorView) // 10 days before the rest
	ts += 10 * 86_400_000
	for i := range 90 {
		add(fmt.Sprint("crowd", i%9), fmt.Sprint("h", i), featurestore.BehaviorView)
		add(fmt.Sprint("crowd", i%9), fmt.Sprint("o", i%30), featurestore.BehaviorView)
	}
	add("crowd0", "ancient", featurestore.BehaviorView)
	for i := range 90 {
		add("heavy", fmt.Sprint("h", i), featurestore.BehaviorView)
	}
	for i := range 12 {
		add("heavy", fmt.Sprint("o", i), featurestore.BehaviorCart)
	}
	for _, m := range []string{MethodFull, MethodFullFrozen, MethodItem2Item, MethodPopular, MethodMF} {
		rep, err := Run(context.Background(), evs, Options{Warmup: 0.99, Ks: []int{50}, Bootstrap: 10, Seed: 1,
			Methods: []string{m}, Dir: t.TempDir()})
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if rep.Discovery.Targets == 0 {
			t.Fatalf("%s: no discovery target", m)
		}
	}
}

// A delayed store applies an event only once the replay reaches a
// target at least the delay newer: before that the store does not know
// it (its clock, the user's record) and after it does.
func TestDelayedStoreCatchUp(t *testing.T) {
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fst, err := featurestore.Open(t.TempDir(), featurestore.Options{Clock: "event", CacheBytes: 1 << 20, Learner: m})
	if err != nil {
		t.Fatal(err)
	}
	defer fst.Close()
	st := &store{Store: fst, models: m, rec: recommend.New(fst, m)}
	t0 := time.Date(2017, 11, 25, 0, 0, 0, 0, time.UTC).UnixMilli()
	var evs []featurestore.Event
	for i := range 10 {
		evs = append(evs, ev(fmt.Sprint("u", i), "a", featurestore.BehaviorView, t0+int64(i)*60_000))
	}
	ds := &delayedStore{delay: 3 * 60_000, method: DelayedMethod(3 * time.Minute), st: st}
	for i, e := range evs {
		if err := ds.catchUp(evs, i, e.TS); err != nil {
			t.Fatal(err)
		}
		// Applied: exactly the events at least 3 minutes older.
		want := max(0, i-2)
		if ds.next != want {
			t.Fatalf("target %d: %d events applied, want %d", i, ds.next, want)
		}
		for j := range evs[:i] {
			_, found, err := st.User(evs[j].UserID)
			if err != nil {
				t.Fatal(err)
			}
			if visible := evs[j].TS+ds.delay <= e.TS; found != visible {
				t.Errorf("target %d: event %d (%d min older) known %v, want %v", i, j, i-j, found, visible)
			}
		}
		if want > 0 && st.Now() != evs[want-1].TS {
			t.Errorf("target %d: store clock %d, want %d", i, st.Now(), evs[want-1].TS)
		}
	}
}

func TestDelayedMethod(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "full", time.Second: "full@1s", time.Minute: "full@1m",
		time.Hour: "full@1h", 24 * time.Hour: "full@24h", 90 * time.Minute: "full@1h30m", 1500 * time.Millisecond: "full@1.5s"} {
		if got := DelayedMethod(d); got != want {
			t.Errorf("DelayedMethod(%s) = %q, want %q", d, got, want)
		}
	}
}

// Delays add a store each and leave every other figure as it was: the
// same targets, the same ranks, the same intervals. A delay longer than
// the replay serves from an empty store, and finds nothing.
func TestRunDelays(t *testing.T) {
	evs := clusters()[:1500]
	o := Options{Warmup: 0.7, Ks: []int{10}, Bootstrap: 50, Seed: 1, Methods: []string{MethodRecent, MethodFull}}
	o.Dir = t.TempDir()
	plain, err := Run(context.Background(), evs, o)
	if err != nil {
		t.Fatal(err)
	}
	o.Delays = []time.Duration{time.Hour, 0, time.Minute, 1000 * time.Hour, time.Minute}
	rep, err := Run(context.Background(), evs, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		name        string
		plain, with *VariantReport
	}{{"discovery", plain.Discovery, rep.Discovery}, {"re-engagement", plain.Reengagement, rep.Reengagement},
		{"kept", plain.ReengagementKeepPurchased, rep.ReengagementKeepPurchased}} {
		if v.with.Targets != v.plain.Targets || v.with.Targets == 0 {
			t.Errorf("%s: %d targets with delays, %d without", v.name, v.with.Targets, v.plain.Targets)
		}
		for m, vals := range v.plain.Methods {
			if fmt.Sprint(vals, v.plain.Intervals[m]) != fmt.Sprint(v.with.Methods[m], v.with.Intervals[m]) {
				t.Errorf("%s: %s changed with delays: %v, then %v", v.name, m, vals, v.with.Methods[m])
			}
		}
		for _, m := range []string{"full@1m", "full@1h", "full@1000h"} {
			if _, ok := v.with.Methods[m]; !ok {
				t.Errorf("%s: no %s", v.name, m)
			}
		}
		if hr := v.with.Methods["full@1000h"]["hr@10"]; hr != 0 {
			t.Errorf("%s: full@1000h hit %v of targets from a store that applied nothing", v.name, hr)
		}
		if hr := v.with.Methods["full@1m"]["hr@10"]; hr == 0 {
			t.Errorf("%s: full@1m found nothing", v.name)
		}
	}
	f := rep.Freshness
	if f == nil || f.K != 10 || len(f.Reengagement) != 4 || len(f.Discovery) != 4 {
		t.Fatalf("freshness %+v", f)
	}
	for i, want := range []string{"0s", "1m", "1h", "1000h"} {
		p := f.Reengagement[i]
		if p.Delay != want || p.Method != DelayedMethod(time.Duration(p.MS)*time.Millisecond) {
			t.Errorf("point %d: %+v, want delay %s", i, p, want)
		}
		if (i == 0) != (p.VsFull == nil) {
			t.Errorf("point %d: paired difference %v", i, p.VsFull)
		}
	}
	if p := f.Reengagement[0]; p.NDCG != rep.Reengagement.Methods[MethodFull]["ndcg@10"] || p.HR != rep.Reengagement.Methods[MethodFull]["hr@10"] {
		t.Errorf("delay 0 is not full: %+v", p)
	}
	if best, _ := rep.Reengagement.Best("ndcg@10"); best != MethodRecent {
		t.Errorf("best other method %q: a delayed full is full, not another method", best)
	}
	if plain.Freshness != nil {
		t.Error("a freshness curve without delays")
	}
}

func TestValidateDelays(t *testing.T) {
	for _, d := range []time.Duration{-time.Second, 400 * 24 * time.Hour, 1500 * time.Microsecond} {
		o := Options{Ks: []int{10}, Delays: []time.Duration{d}}
		if err := o.Validate(); err == nil || err.Error()[:len("model-delay:")] != "model-delay:" {
			t.Errorf("delay %s: err %v, want one naming model-delay", d, err)
		}
	}
}

// Re-engagement is reported with the user's purchases dropped from every
// method's list (the server's default) and kept: a re-purchase is a hit
// of recent only when they are kept.
func TestRunKeepPurchased(t *testing.T) {
	var evs []featurestore.Event
	ts := int64(1_500_000_000_000)
	for _, x := range []struct {
		item string
		b    featurestore.Behavior
	}{{"a", featurestore.BehaviorPurchase}, {"b", featurestore.BehaviorView}, {"c", featurestore.BehaviorView},
		{"a", featurestore.BehaviorPurchase}, {"c", featurestore.BehaviorCart}} {
		evs = append(evs, ev("u", x.item, x.b, ts))
		ts += 1000
	}
	rep, err := Run(context.Background(), evs, Options{Warmup: 0.5, Ks: []int{10}, Methods: []string{MethodRecent, MethodFull}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// Targets: the purchase of a (bought before) and the cart of c.
	if rep.Reengagement.Targets != 2 || rep.ReengagementKeepPurchased.Targets != 2 || rep.RepurchaseTargets != 1 {
		t.Fatalf("targets %d and %d, repurchases %d", rep.Reengagement.Targets, rep.ReengagementKeepPurchased.Targets, rep.RepurchaseTargets)
	}
	// Dropped: a is not listed, c is 1st of (c, b). Kept: a is 3rd of
	// (c, b, a), then c is 2nd of (a, c, b).
	if got := rep.Reengagement.Methods[MethodRecent]["mrr"]; got != 0.5 {
		t.Errorf("dropped: recent MRR %v, want (0 + 1)/2", got)
	}
	if got := rep.ReengagementKeepPurchased.Methods[MethodRecent]["mrr"]; math.Abs(got-(1.0/3+0.5)/2) > 1e-12 {
		t.Errorf("kept: recent MRR %v, want (1/3 + 1/2)/2", got)
	}
	if got := rep.Reengagement.Methods[MethodFull]["hr@10"]; got > 0.5 {
		t.Errorf("dropped: full HR@10 %v, but it cannot list a", got)
	}
}
