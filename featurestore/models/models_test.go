package models_test

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/storetest"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
)

// These tests run the models where they run in production: inside a
// store's Apply, read back through the models' read API and the
// recommender.

const (
	t0     = storetest.T0
	minute = storetest.Minute
	hour   = storetest.Hour
	dayMS  = storetest.Day
)

type testStore = storetest.Store

func openModelStore(t testing.TB, fs vfs.FS, dir string, mo models.Options) *testStore {
	t.Helper()
	return storetest.OpenT(t, fs, dir, mo, 0)
}

var (
	checkGoroutines = storetest.CheckGoroutines
	ev              = storetest.Ev
	entries         = storetest.Entries
	scoredIDs       = storetest.ItemIDs
	recIDs          = storetest.RecIDs
	mustRecommend   = storetest.MustRecommend
)

func applyAll(t testing.TB, s *testStore, evs ...featurestore.Event) {
	t.Helper()
	storetest.ApplyAll(t, s.Store, evs...)
}

func mustApply(t testing.TB, s *testStore, end uint64, es []featurestore.Entry) featurestore.ApplyResult {
	t.Helper()
	return storetest.MustApply(t, s.Store, end, es)
}

func mustPopular(t testing.TB, s *testStore, cat string, k int) []featurestore.Scored {
	t.Helper()
	return storetest.MustPopular(t, s.Store, cat, k)
}

func mustNeighbors(t testing.TB, s *testStore, item string, k int) []models.Neighbor {
	t.Helper()
	ns, err := s.M.Neighbors(s.Store, item, k)
	if err != nil {
		t.Fatalf("Neighbors(%q, %d): %v", item, k, err)
	}
	return ns
}

func neighborIDs(ns []models.Neighbor) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.ItemID
	}
	return out
}

func mustSimilarItems(t testing.TB, s *testStore, item string, k int) []recommend.Recommendation {
	t.Helper()
	rs, err := s.Rec.SimilarItems(item, k)
	if err != nil {
		t.Fatalf("SimilarItems(%q, %d): %v", item, k, err)
	}
	return rs
}

func userFactors(t testing.TB, s *testStore) map[string][]float32 {
	t.Helper()
	out := make(map[string][]float32)
	if err := s.M.ScanUserFactors(func(user string, f []float32, _ int64) error {
		out[user] = slices.Clone(f)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func itemFactors(t testing.TB, s *testStore) map[string][]float32 {
	t.Helper()
	out := make(map[string][]float32)
	if err := s.M.ScanItemFactors(func(item string, f []float32) error {
		out[item] = slices.Clone(f)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func mustModels(t testing.TB, s *testStore) map[string]models.Info {
	t.Helper()
	list, err := s.M.Info()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]models.Info, len(list))
	for _, m := range list {
		out[m.Name] = m
	}
	return out
}

func closeRel(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(math.Abs(a), math.Abs(b)) }

func ff(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// dumpNeighbors renders every item's neighbours exactly.
func dumpNeighbors(t testing.TB, s *testStore) string {
	t.Helper()
	var b strings.Builder
	if err := s.M.ScanItemNeighbors(func(item string, ns []models.Neighbor) error {
		fmt.Fprintf(&b, "neighbors %s:", item)
		for _, n := range ns {
			fmt.Fprintf(&b, " %s=%s", n.ItemID, ff(n.Score))
		}
		b.WriteByte('\n')
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// dumpFactors renders every user's and item's factors exactly.
func dumpFactors(t testing.TB, s *testStore) string {
	t.Helper()
	var b strings.Builder
	if err := s.M.ScanUserFactors(func(user string, f []float32, events int64) error {
		fmt.Fprintf(&b, "user %s events=%d %v\n", user, events, f)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.M.ScanItemFactors(func(item string, f []float32) error {
		fmt.Fprintf(&b, "item %s %v\n", item, f)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// dumpRanker renders the published ranker weights exactly.
func dumpRanker(s *testStore) string {
	names, w, version := s.M.RankerWeights()
	var b strings.Builder
	fmt.Fprintf(&b, "ranker v%d %s, %d weights:", version, s.M.Version(), len(w))
	for i, x := range w {
		if i < len(names) {
			b.WriteString(" " + names[i])
		}
		b.WriteString("=" + ff(x))
	}
	b.WriteString("; history weights:")
	for _, x := range s.M.RankerHistoryWeights() {
		b.WriteString(" " + ff(x))
	}
	b.WriteByte('\n')
	return b.String()
}

// dumpModels renders Models() exactly.
func dumpModels(t testing.TB, s *testStore) string {
	t.Helper()
	list, err := s.M.Info()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, m := range list {
		fmt.Fprintf(&b, "model %s v%d examples=%d auc=%s ll=%s pauc=%s pll=%s last=%d frozen=%v\n", m.Name, m.Version,
			m.Examples, ff(m.AUC), ff(m.LogLoss), ff(m.PublishedAUC), ff(m.PublishedLogLoss), m.LastEventTS, m.Frozen)
	}
	return b.String()
}

// dumpRawModels renders every stored model key and value.
func dumpRawModels(t testing.TB, s *testStore) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{"n/", "v/u/", "v/i/", "m/models"} {
		if err := s.ScanPrefix([]byte(p), func(id string, v []byte) error {
			fmt.Fprintf(&b, "raw %q %x\n", p+id, v)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// dumpServing renders what the serving calls answer for users and items.
func dumpServing(t testing.TB, s *testStore, users, items []string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		for _, m := range []string{recommend.MethodFull, recommend.MethodItem2Item, recommend.MethodMF, recommend.MethodUser2User} {
			for _, r := range mustRecommend(t, s, u, recommend.Options{K: 5, Method: m}) {
				fmt.Fprintf(&b, "recommend %s %s: %s %s %q\n", u, m, r.ItemID, ff(r.Score), r.Reason)
			}
		}
		su, err := s.Rec.SimilarUsers(u, 3)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "similar users %s: %v\n", u, su)
	}
	for _, it := range items {
		for _, r := range mustSimilarItems(t, s, it, 4) {
			fmt.Fprintf(&b, "similar %s: %s %s %q\n", it, r.ItemID, ff(r.Score), r.Reason)
		}
	}
	fmt.Fprintf(&b, "model items %d\n", s.M.ItemCount())
	return b.String()
}

// dumpAll is the whole observable model state of s.
func dumpAll(t testing.TB, s *testStore, users, items []string) string {
	t.Helper()
	return dumpNeighbors(t, s) + dumpFactors(t, s) + dumpRanker(s) + dumpModels(t, s) + dumpRawModels(t, s) +
		dumpServing(t, s, users, items)
}

// diffLines reports the first differing line of two dumps.
func diffLines(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(la), len(lb)) {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  %s\nvs\n  %s", i+1, x, y)
		}
	}
	return "no difference"
}

// buyTogether is one user viewing and buying a, then b, a minute apart.
func buyTogether(id, user, a, b, cat string, ts int64) []featurestore.Event {
	return []featurestore.Event{
		ev(id+"va", user, a, cat, featurestore.BehaviorView, ts),
		ev(id+"pa", user, a, cat, featurestore.BehaviorPurchase, ts+minute),
		ev(id+"vb", user, b, cat, featurestore.BehaviorView, ts+2*minute),
		ev(id+"pb", user, b, cat, featurestore.BehaviorPurchase, ts+3*minute),
	}
}

// Items bought together by several users are each other's top
// neighbours; an item viewed once with one of them is not; similar items
// carry reasons and fall back to popular items for a cold item.
func TestModelItemToItem(t *testing.T) {
	checkGoroutines(t)
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{})
	var evs []featurestore.Event
	for u := range 3 {
		evs = append(evs, buyTogether(fmt.Sprint("u", u), fmt.Sprint("u", u), "A", "B", "c1", t0+int64(u)*hour)...)
	}
	evs = append(evs,
		ev("x1", "u9", "A", "c1", featurestore.BehaviorView, t0+4*hour),
		ev("x2", "u9", "C", "c2", featurestore.BehaviorView, t0+4*hour+minute),
		// D: one view by a user with nothing else, days later.
		ev("x3", "lone", "D", "c2", featurestore.BehaviorView, t0+5*24*hour),
	)
	applyAll(t, s, evs...)

	nA := mustNeighbors(t, s, "A", 10)
	if got := neighborIDs(nA); !slices.Equal(got, []string{"B", "C"}) {
		t.Fatalf("Neighbors(A) = %v, want [B C]", nA)
	}
	if nA[0].Score <= nA[1].Score || nA[1].Score <= 0 {
		t.Errorf("Neighbors(A) scores = %v, want B's above C's, both positive", nA)
	}
	if got := neighborIDs(mustNeighbors(t, s, "B", 10)); !slices.Equal(got, []string{"A"}) {
		t.Errorf("Neighbors(B) = %v, want [A]", got)
	}
	if got := neighborIDs(mustNeighbors(t, s, "C", 10)); !slices.Equal(got, []string{"A"}) {
		t.Errorf("Neighbors(C) = %v, want [A]", got)
	}
	if got := mustNeighbors(t, s, "D", 10); len(got) != 0 {
		t.Errorf("Neighbors(D) = %v, want none", got)
	}
	if got := mustNeighbors(t, s, "A", 1); len(got) != 1 || got[0] != nA[0] {
		t.Errorf("Neighbors(A, 1) = %v, want [%v]", got, nA[0])
	}
	// By hand: per user, the view of B pairs with A (bought a minute
	// before) with weight sqrt(1*4) damped by 1/sqrt(UserAlpha 5 + 2 events
	// before it), the purchase of B pairs with A with weight sqrt(4*4)
	// damped by 1/sqrt(5+3); each pair decays with its gap (half-life 24h)
	// and everything with its age (half-life 30 days, the default) as of the read clock,
	// the newest event time. sim = co-occurrence / (sqrt(mass A * mass B)
	// + shrinkage 1), where the partner's mass is as of the pair's last
	// update.
	now := s.Now()
	dec := func(w float64, ts int64) float64 { return w * math.Exp2(float64(ts-now)/float64(30*24*hour)) }
	var cAB, massA, massB float64
	for u := range int64(3) {
		ts := t0 + u*hour
		cAB += dec(2/math.Sqrt(7)*math.Exp2(-1.0/(24*60)), ts+2*minute) + dec(4/math.Sqrt(8)*math.Exp2(-2.0/(24*60)), ts+3*minute)
		massA += dec(1, ts) + dec(4, ts+minute)
		massB += dec(1, ts+2*minute) + dec(4, ts+3*minute)
	}
	massAnow := massA + dec(1, t0+4*hour) // u9's view of A came after the last A-B pair
	if want := cAB / (math.Sqrt(massAnow*massB) + 1); !closeRel(nA[0].Score, want, 1e-9) {
		t.Errorf("sim(A, B) = %v, want %v by hand", nA[0].Score, want)
	}
	if got, want := mustNeighbors(t, s, "B", 1)[0].Score, cAB/(math.Sqrt(massA*massB)+1); !closeRel(got, want, 1e-9) {
		t.Errorf("sim(B, A) = %v, want %v by hand", got, want)
	}
	// A-C: one view pair by u9 (1 event before it), a minute apart.
	cAC := dec(1/math.Sqrt(6)*math.Exp2(-1.0/(24*60)), t0+4*hour+minute)
	if want := cAC / (math.Sqrt(massAnow*dec(1, t0+4*hour+minute)) + 1); !closeRel(nA[1].Score, want, 1e-9) {
		t.Errorf("sim(A, C) = %v, want %v by hand", nA[1].Score, want)
	}
	if got := mustModels(t, s)["item2item"].Examples; got != 3*2+1 {
		t.Errorf("item2item examples (pairs) = %d, want 7", got)
	}

	sim := mustSimilarItems(t, s, "A", 2)
	if len(sim) != 2 || sim[0].ItemID != "B" || sim[1].ItemID != "C" {
		t.Fatalf("SimilarItems(A, 2) = %+v, want B then C", sim)
	}
	for _, r := range sim {
		if r.Reason != "often together with A" {
			t.Errorf("SimilarItems(A) reason of %s = %q, want %q", r.ItemID, r.Reason, "often together with A")
		}
	}
	// More than A has neighbours: filled with popular items, never A.
	sim = mustSimilarItems(t, s, "A", 10)
	if got := recIDs(sim); !slices.Equal(got, []string{"B", "C", "D"}) {
		t.Errorf("SimilarItems(A, 10) = %v, want [B C D]", got)
	}
	if r := sim[len(sim)-1]; r.Reason != "popular now" {
		t.Errorf("fill reason = %q, want popular now", r.Reason)
	}

	// A cold item: popular items of its category first, then overall.
	sim = mustSimilarItems(t, s, "D", 3)
	if len(sim) != 3 {
		t.Fatalf("SimilarItems(D, 3) = %+v, want 3 items", sim)
	}
	if sim[0].ItemID != "C" || sim[0].Reason != "popular in category c2" {
		t.Errorf("SimilarItems(D)[0] = %+v, want C popular in category c2", sim[0])
	}
	pop := mustPopular(t, s, "", 10)
	var wantFill []string
	for _, p := range pop {
		if p.ItemID != "C" && p.ItemID != "D" {
			wantFill = append(wantFill, p.ItemID)
		}
	}
	if got := recIDs(sim[1:]); !slices.Equal(got, wantFill[:2]) {
		t.Errorf("SimilarItems(D) fill = %v, want the two most popular others %v", got, wantFill[:2])
	}
	for _, r := range sim[1:] {
		if r.Reason != "popular now" {
			t.Errorf("SimilarItems(D) reason of %s = %q, want popular now", r.ItemID, r.Reason)
		}
	}
	// An unknown item: popular items overall.
	sim = mustSimilarItems(t, s, "nothing", 4)
	if got := recIDs(sim); len(got) != 4 || !slices.Equal(got, scoredIDs(pop)) {
		t.Errorf("SimilarItems(nothing, 4) = %v, want every item by popularity %v", got, scoredIDs(pop))
	}
	if got := mustSimilarItems(t, s, "A", 0); len(got) != 0 {
		t.Errorf("SimilarItems(A, 0) = %v, want none", got)
	}
}

// Swing's damping: the same pair weighs less from a user with many
// events; pairs farther apart than PairWindow are not formed; neighbour
// lists stay bounded under many distinct partners.
func TestModelSwingDampingAndCaps(t *testing.T) {
	t.Run("damping", func(t *testing.T) {
		s := openModelStore(t, vfs.NewMem(), "db", models.Options{})
		T := t0 + 10*24*hour
		var evs []featurestore.Event
		// heavy's 20 earlier events, more than PairWindow (72h) before X2.
		for i := range 20 {
			evs = append(evs, ev(fmt.Sprint("f", i), "heavy", fmt.Sprint("F", i), "c0", featurestore.BehaviorView, T-100*hour-int64(i)*minute))
		}
		evs = append(evs,
			ev("l1", "light", "X1", "c", featurestore.BehaviorView, T),
			ev("l2", "light", "Y1", "c", featurestore.BehaviorView, T+minute),
			ev("h1", "heavy", "X2", "c", featurestore.BehaviorView, T),
			ev("h2", "heavy", "Y2", "c", featurestore.BehaviorView, T+minute),
		)
		applyAll(t, s, evs...)
		light, heavy := mustNeighbors(t, s, "X1", 10), mustNeighbors(t, s, "X2", 10)
		if len(light) != 1 || light[0].ItemID != "Y1" || len(heavy) != 1 || heavy[0].ItemID != "Y2" {
			t.Fatalf("Neighbors(X1) = %v, Neighbors(X2) = %v; want [Y1] and [Y2]", light, heavy)
		}
		// The pairs differ only in the damping 1/sqrt(UserAlpha + events
		// before): 1 event for light, 21 for heavy; the masses are equal.
		if got, want := light[0].Score/heavy[0].Score, math.Sqrt((5.0+21)/(5+1)); !closeRel(got, want, 1e-9) {
			t.Errorf("light/heavy pair similarity = %v, want sqrt(26/6) = %v", got, want)
		}
		if got := mustNeighbors(t, s, "Y2", 10); len(got) != 1 || got[0].ItemID != "X2" {
			t.Errorf("Neighbors(Y2) = %v, want only X2 (older history is beyond the pair window)", got)
		}
	})

	t.Run("pair window", func(t *testing.T) {
		s := openModelStore(t, vfs.NewMem(), "db", models.Options{PairWindow: time.Hour})
		applyAll(t, s,
			ev("p", "u", "P", "c", featurestore.BehaviorView, t0),
			ev("q", "u", "Q", "c", featurestore.BehaviorView, t0+hour+1), // 1 ms beyond the window after P
			ev("r", "u", "R", "c", featurestore.BehaviorView, t0+2*hour+1),
		)
		if got := mustNeighbors(t, s, "P", 10); len(got) != 0 {
			t.Errorf("Neighbors(P) = %v, want none: P is more than PairWindow before Q and R", got)
		}
		if got := neighborIDs(mustNeighbors(t, s, "Q", 10)); !slices.Equal(got, []string{"R"}) {
			t.Errorf("Neighbors(Q) = %v, want [R] (exactly PairWindow apart)", got)
		}
		if got := neighborIDs(mustNeighbors(t, s, "R", 10)); !slices.Equal(got, []string{"Q"}) {
			t.Errorf("Neighbors(R) = %v, want [Q]", got)
		}
		if got := mustModels(t, s)["item2item"].Examples; got != 1 {
			t.Errorf("pairs = %d, want 1", got)
		}
	})

	t.Run("pair cap", func(t *testing.T) {
		s := openModelStore(t, vfs.NewMem(), "db", models.Options{PairCap: 2, HistoryCap: 5})
		var evs []featurestore.Event
		for i := range 4 {
			evs = append(evs, ev(fmt.Sprint("e", i), "u", fmt.Sprint("I", i), "c", featurestore.BehaviorView, t0+int64(i)*minute))
		}
		applyAll(t, s, evs...)
		// I3 pairs with its 2 newest history items, I2 and I1, not I0.
		if got := neighborIDs(mustNeighbors(t, s, "I3", 10)); len(got) != 2 || slices.Contains(got, "I0") {
			t.Errorf("Neighbors(I3) = %v, want I2 and I1 only (PairCap 2)", got)
		}
		if got := mustModels(t, s)["item2item"].Examples; got != 0+1+2+2 {
			t.Errorf("pairs = %d, want 5", got)
		}
	})

	t.Run("bounded lists", func(t *testing.T) {
		const keep = 4
		s := openModelStore(t, vfs.NewMem(), "db", models.Options{Neighbors: keep})
		// S: bought with the hub H by 5 users; then 30 users each view H
		// and a partner of their own.
		ts := t0
		for u := range 5 {
			applyAll(t, s, ev(fmt.Sprint("sh", u), fmt.Sprint("s", u), "H", "c", featurestore.BehaviorView, ts),
				ev(fmt.Sprint("ss", u), fmt.Sprint("s", u), "S", "c", featurestore.BehaviorView, ts+minute))
			ts += 2 * minute
		}
		for u := range 30 {
			applyAll(t, s, ev(fmt.Sprint("wh", u), fmt.Sprint("w", u), "H", "c", featurestore.BehaviorView, ts),
				ev(fmt.Sprint("wp", u), fmt.Sprint("w", u), fmt.Sprint("P", u), "c", featurestore.BehaviorView, ts+minute))
			ts += 2 * minute
			pairs, err := s.M.StoredPairs("H")
			if err != nil {
				t.Fatal(err)
			}
			if pairs > keep+keep/2 || pairs > 2*keep {
				t.Fatalf("after %d partners H keeps %d pairs, want at most %d", u+1, pairs, keep+keep/2)
			}
		}
		ns := mustNeighbors(t, s, "H", 100)
		if len(ns) != keep || ns[0].ItemID != "S" {
			t.Errorf("Neighbors(H, 100) = %v, want %d with S first", ns, keep)
		}
		if got := mustNeighbors(t, s, "H", 2); len(got) != 2 || got[0] != ns[0] || got[1] != ns[1] {
			t.Errorf("Neighbors(H, 2) = %v, want the first two of %v", got, ns)
		}
		if err := s.M.ScanItemNeighbors(func(item string, ns []models.Neighbor) error {
			if len(ns) == 0 || len(ns) > keep {
				t.Errorf("ScanItemNeighbors %s: %d neighbours, want 1..%d", item, len(ns), keep)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// A new user and item get factors at once; with two groups of users on
// disjoint items, a user of group 1 is recommended group 1's unseen items
// before group 2's.
func TestModelMF(t *testing.T) {
	// A larger step than the default so that a few rounds separate the groups.
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{Dim: 8, LearningRate: 0.2})
	if s.M.FactorDim() != 8 {
		t.Fatalf("FactorDim = %d, want 8", s.M.FactorDim())
	}
	applyAll(t, s, ev("first", "p", "A0", "c1", featurestore.BehaviorView, t0))
	var events int64
	if err := s.M.ScanUserFactors(func(user string, f []float32, n int64) error {
		if user == "p" {
			events = n
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	uf, itf := userFactors(t, s), itemFactors(t, s)
	if len(uf) != 1 || len(uf["p"]) != 8 || slices.Equal(uf["p"], make([]float32, 8)) || events != 1 {
		t.Errorf("user factors after one event = %v (events %d), want p with 8 non-zero factors and 1 event", uf, events)
	}
	if len(itf) != 1 || len(itf["A0"]) != 8 || slices.Equal(itf["A0"], make([]float32, 8)) || s.M.ItemCount() != 1 {
		t.Errorf("item factors after one event = %v, model items %d; want A0 with 8 non-zero factors", itf, s.M.ItemCount())
	}

	rng := rand.New(rand.NewPCG(1, 2))
	ts := t0 + minute
	n := 0
	for round := range 10 {
		var evs []featurestore.Event
		for g, prefix := range []string{"A", "B"} {
			for u := range 5 {
				for _, i := range rng.Perm(6) {
					evs = append(evs, ev(fmt.Sprint("e", n), fmt.Sprintf("g%d_%d", g, u), fmt.Sprint(prefix, i), "c"+fmt.Sprint(g+1), featurestore.BehaviorView, ts))
					n++
					ts += minute
				}
			}
		}
		// The probe user of group 1 has seen only A0 and A1.
		for _, i := range []string{"A0", "A1"} {
			evs = append(evs, ev(fmt.Sprint("p", round, i), "p", i, "c1", featurestore.BehaviorView, ts))
			ts += minute
		}
		rng.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
		applyAll(t, s, evs...)
	}
	recs := mustRecommend(t, s, "p", recommend.Options{K: 20, Method: recommend.MethodMF, ExcludeSeen: true})
	ids := recIDs(recs)
	if len(ids) != 10 {
		t.Fatalf("MF for p = %v, want the 10 unseen items", ids)
	}
	top := slices.Sorted(slices.Values(ids[:4]))
	if !slices.Equal(top, []string{"A2", "A3", "A4", "A5"}) {
		t.Errorf("MF for p = %v, want group 1's unseen items A2..A5 first", ids)
	}
	for i, r := range recs {
		if r.Reason != "matches your taste profile" || (i > 0 && r.Score > recs[i-1].Score) {
			t.Errorf("MF recommendation %d = %+v (reason or order wrong)", i, r)
		}
	}
	// And the other way round for a group 2 user.
	recs = mustRecommend(t, s, "g1_0", recommend.Options{K: 6, Method: recommend.MethodMF})
	if top := slices.Sorted(slices.Values(recIDs(recs))); !slices.Equal(top, []string{"B0", "B1", "B2", "B3", "B4", "B5"}) {
		t.Errorf("MF for g1_0 = %v, want group 2's items B0..B5", recIDs(recs))
	}
}

// learnableStream: users keep coming back to their own few items of a
// catalogue of 40, so an item the user has seen is a far likelier positive
// than a uniformly drawn negative.
func learnableStream(n int) []featurestore.Event {
	rng := rand.New(rand.NewPCG(5, 6))
	out := make([]featurestore.Event, n)
	for i := range out {
		u := rng.IntN(10)
		item := 4*u + rng.IntN(4)
		b := featurestore.BehaviorView
		if rng.IntN(5) == 0 {
			b = featurestore.BehaviorCart
		}
		out[i] = ev(fmt.Sprint("e", i), fmt.Sprint("u", u), fmt.Sprint("i", item), fmt.Sprint("c", item%4), b, t0+int64(i)*minute)
	}
	return out
}

// The ranker learns from every event and its sampled negatives, beats
// chance on the rolling window and publishes versions.
func TestModelRankerLearns(t *testing.T) {
	const negatives, events = 3, 400
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{Negatives: negatives, RankerWindow: 200, PublishEvery: 100, RankerSample: 1})
	if _, _, v := s.M.RankerWeights(); v != 0 || s.M.Version() != "ranker-v0" {
		t.Errorf("fresh store ranker version %d (%s), want 0", v, s.M.Version())
	}
	var last int64
	for i, e := range learnableStream(events) {
		applyAll(t, s, e)
		ex := mustModels(t, s)["ranker"].Examples
		// One positive and up to Negatives uniform negatives per event;
		// the first event has no other item to draw.
		if d := ex - last; d < 1 || d > 1+negatives || (i == 0 && d != 1) {
			t.Fatalf("event %d added %d ranker examples, want 1..%d", i, d, 1+negatives)
		}
		last = ex
	}
	m := mustModels(t, s)
	r := m["ranker"]
	if m["mf"].Examples != events || m["user2user"].Examples != events {
		t.Errorf("mf/user2user examples = %d/%d, want %d", m["mf"].Examples, m["user2user"].Examples, events)
	}
	if r.Examples <= events || r.Examples > events*(1+negatives) {
		t.Errorf("ranker examples = %d, want in (%d, %d]", r.Examples, events, events*(1+negatives))
	}
	if !(r.AUC > 0.7) || !(r.LogLoss > 0) || !(r.PublishedAUC > 0.5) {
		t.Errorf("ranker rolling AUC %v (published %v), log loss %v; want AUC > 0.7", r.AUC, r.PublishedAUC, r.LogLoss)
	}
	if r.Version < 1 || r.Version > r.Examples/100 || r.LastEventTS != t0+(events-1)*minute {
		t.Errorf("ranker version %d after %d examples (publish every 100), last event %d", r.Version, r.Examples, r.LastEventTS)
	}
	names, w, v := s.M.RankerWeights()
	if v != r.Version || s.M.Version() != fmt.Sprintf("ranker-v%d", v) || len(w) != len(names) || len(names) != models.NumRankFeatures {
		t.Fatalf("RankerWeights = %v %v v%d (%s), Models version %d", names, w, v, s.M.Version(), r.Version)
	}
	if i := slices.Index(names, "seen"); w[i] <= 0 {
		t.Errorf("weight of seen = %v, want positive: users come back to their items", w[i])
	}
	// The published ranker orders the full method's candidates.
	recs := mustRecommend(t, s, "u0", recommend.Options{K: 5})
	for i := 1; i < len(recs); i++ {
		if recs[i].Score > recs[i-1].Score || recs[i].Score <= 0 || recs[i].Score >= 1 {
			t.Errorf("full recommendations not ordered by ranker probability: %+v", recs)
		}
	}
}

// smallModels are hyperparameters small enough that short streams reach
// every cap: history, pairs, neighbour pruning, recent users, the ranker
// window and publication.
var smallModels = models.Options{Neighbors: 3, HistoryCap: 8, PairCap: 4, RecentUsers: 4, Dim: 4, Negatives: 3,

	RankerWindow: 60, PublishEvery: 50, RankerSample: 1}

// modelStream is a random log over few users and items: times mostly
// increasing with some late events and some jumps past the pair window,
// every behavior, resent events and gaps in the offsets.
func modelStream(seed uint64, n int) []featurestore.Entry {
	rng := rand.New(rand.NewPCG(seed, 77))
	var out []featurestore.Entry
	off := uint64(rng.IntN(3))
	ts := t0
	behaviors := []featurestore.Behavior{featurestore.BehaviorView, featurestore.BehaviorView, featurestore.BehaviorView, featurestore.BehaviorCart, featurestore.BehaviorFav, featurestore.BehaviorPurchase}
	for i := range n {
		off += 1 + uint64(rng.IntN(10)/9)
		if i > 0 && rng.IntN(15) == 0 {
			out = append(out, featurestore.Entry{Offset: off, Event: out[rng.IntN(len(out))].Event})
			continue
		}
		ts += int64(rng.IntN(30)) * minute
		if rng.IntN(60) == 0 {
			ts += 4 * 24 * hour
		}
		late := int64(0)
		if rng.IntN(8) == 0 {
			late = int64(rng.IntN(120)) * minute
		}
		u := rng.IntN(8)
		item := (u%2)*6 + rng.IntN(10)
		out = append(out, featurestore.Entry{Offset: off, Event: ev(fmt.Sprint("e", i), fmt.Sprint("u", u), fmt.Sprint("i", item),
			fmt.Sprint("c", item%3), behaviors[rng.IntN(len(behaviors))], ts-late)})
	}
	return out
}

// applySplit applies log in batches ending at the given indexes.
func applySplit(t testing.TB, s *testStore, log []featurestore.Entry, ends []int) {
	t.Helper()
	p := 0
	for _, q := range ends {
		mustApply(t, s, log[q-1].Offset+1, log[p:q])
		p = q
	}
	if p != len(log) {
		t.Fatalf("split ends at %d of %d", p, len(log))
	}
}

var (
	dumpUsers = []string{"u0", "u1", "u4", "u7", "nobody"}
	dumpItems = []string{"i0", "i5", "i9", "i15", "nothing"}
)

// The model state does not depend on how the log is split into batches,
// re-applying a batch changes nothing, and reopening the store changes
// nothing: applying half, reopening and applying the rest is applying all.
func TestModelDeterminism(t *testing.T) {
	checkGoroutines(t)
	log := modelStream(1, 300)
	n := len(log)
	ref := openModelStore(t, vfs.NewMem(), "db", smallModels)
	applySplit(t, ref, log, []int{n})
	want := dumpAll(t, ref, dumpUsers, dumpItems)
	m := mustModels(t, ref)
	if m["ranker"].Version < 1 || m["item2item"].Examples == 0 || !strings.Contains(want, "neighbors ") {
		t.Fatalf("the stream trains too little to compare: %v", m)
	}

	singles := make([]int, n)
	for i := range singles {
		singles[i] = i + 1
	}
	splits := map[string][]int{"singles": singles, "halves": {n / 2, n}}
	rng := rand.New(rand.NewPCG(9, 9))
	for r := range 3 {
		var ends []int
		for p := 0; p < n; {
			p = min(n, p+1+rng.IntN(40))
			ends = append(ends, p)
		}
		splits[fmt.Sprint("random", r)] = ends
	}
	for name, ends := range splits {
		t.Run(name, func(t *testing.T) {
			s := openModelStore(t, vfs.NewMem(), "db", smallModels)
			applySplit(t, s, log, ends)
			if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
				t.Errorf("model state after %d batches differs from one batch: %s", len(ends), diffLines(got, want))
			}
		})
	}

	// Caches so small that every batch evicts: the store's record caches
	// (BatchRecords falls back to Pebble for negatives' item records) and
	// the models' own.
	t.Run("tiny caches", func(t *testing.T) {
		mo := smallModels
		mo.CacheEntries = 1
		s := storetest.OpenOptsT(t, "db", mo, featurestore.Options{FS: vfs.NewMem(), RecordCacheEntries: 3})
		applySplit(t, s, log, splits["random0"])
		if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
			t.Errorf("model state with tiny caches differs: %s", diffLines(got, want))
		}
	})

	// Byte budgets so small that every batch evicts by bytes (the entry
	// bounds never bind): the writer's and the readers' caches, as
	// --state.memory-limit sizes them.
	t.Run("tiny byte budgets", func(t *testing.T) {
		mo := smallModels
		mo.CacheBytes = 8 << 10
		s := storetest.OpenOptsT(t, "db", mo, featurestore.Options{FS: vfs.NewMem(), RecordCacheBytes: 4 << 10})
		applySplit(t, s, log, splits["random0"])
		if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
			t.Errorf("model state with tiny byte budgets differs: %s", diffLines(got, want))
		}
		if n := s.M.CachedNeighbors(); n == 0 || n >= 50 {
			t.Errorf("%d neighbour records cached in 8 KiB: want some, not all", n)
		}
	})

	// A batch that fails after the models learned from some of its events
	// leaves nothing behind (Abort drops the batch's records and reloads).
	t.Run("failed batch", func(t *testing.T) {
		s := openModelStore(t, vfs.NewMem(), "db", smallModels)
		applySplit(t, s, log[:n/2], []int{n / 2})
		bad := log[n/2 : n/2+40]
		if _, err := s.Apply(bad[len(bad)-1].Offset, bad); err == nil {
			t.Fatal("Apply with an entry at its end succeeded")
		}
		applySplit(t, s, log[n/2:], []int{40, n - n/2})
		if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
			t.Errorf("model state after a failed batch differs: %s", diffLines(got, want))
		}
	})

	t.Run("reapply", func(t *testing.T) {
		s := openModelStore(t, vfs.NewMem(), "db", smallModels)
		applySplit(t, s, log, []int{n / 3, n})
		// The same batches again (offsets below the applied offset).
		if res := mustApply(t, s, log[n-1].Offset+1, log); res.Applied != 0 || res.Duplicates != 0 {
			t.Errorf("re-applying the log = %+v, want nothing applied", res)
		}
		if res := mustApply(t, s, log[n-1].Offset+1, log[n/3:]); res.Applied != 0 {
			t.Errorf("re-applying the last batch = %+v, want nothing applied", res)
		}
		// The same events resent at new offsets are duplicates.
		resent := make([]featurestore.Entry, n)
		next := log[n-1].Offset + 1
		for i, e := range log {
			resent[i] = featurestore.Entry{Offset: next + uint64(i), Event: e.Event}
		}
		if res := mustApply(t, s, next+uint64(n), resent); res.Applied != 0 {
			t.Errorf("resending the log = %+v, want only duplicates", res)
		}
		if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
			t.Errorf("model state after re-applying differs: %s", diffLines(got, want))
		}
	})

	t.Run("reopen", func(t *testing.T) {
		fs := vfs.NewMem()
		s := openModelStore(t, fs, "db", smallModels)
		applySplit(t, s, log[:n/2], []int{n / 3, n / 2})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openModelStore(t, fs, "db", smallModels)
		applySplit(t, s, log[n/2:], []int{n/4 + 1, n - n/2})
		if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
			t.Errorf("apply half, reopen, apply the rest differs from applying all: %s", diffLines(got, want))
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openModelStore(t, fs, "db", smallModels)
		if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
			t.Errorf("state after reopening differs: %s", diffLines(got, want))
		}
		// And what comes next is the same too.
		more := modelStream(2, 60)
		for i := range more {
			more[i].Offset += log[n-1].Offset + 1
		}
		applySplit(t, s, more, []int{len(more)})
		applySplit(t, ref, more, []int{len(more)})
		if got, want := dumpAll(t, s, dumpUsers, dumpItems), dumpAll(t, ref, dumpUsers, dumpItems); got != want {
			t.Errorf("after more events the reopened store differs: %s", diffLines(got, want))
		}
	})
}

// Frozen models keep their neighbours, factors and ranker weights while
// user histories (and so ExcludeSeen) still move.
func TestModelFreeze(t *testing.T) {
	s := openModelStore(t, vfs.NewMem(), "db", smallModels)
	log := modelStream(3, 200)
	applySplit(t, s, log, []int{len(log)})
	// The stored neighbour records and item models (neighbour scores are
	// as of the read clock, which moves on), factors and the ranker.
	frozenState := func() string {
		var b strings.Builder
		for _, p := range [][]byte{[]byte("n/"), []byte("v/i/")} {
			if err := s.ScanPrefix(p, func(id string, v []byte) error {
				fmt.Fprintf(&b, "%s%s %x\n", p, id, v)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		return b.String() + dumpFactors(t, s) + dumpRanker(s) + fmt.Sprint(s.M.ItemCount())
	}
	before := frozenState()
	mBefore := mustModels(t, s)
	s.M.Freeze(true)
	last := log[len(log)-1]
	more := modelStream(4, 100)
	for i := range more {
		more[i].Offset += last.Offset + 1
		more[i].Event.ID += "x"
		more[i].Event.TS += s.Stats().MaxTS - t0
	}
	var ts int64
	for _, e := range more {
		ts = max(ts, e.Event.TS)
	}
	more = append(more,
		featurestore.Entry{Offset: more[len(more)-1].Offset + 1, Event: ev("f1", "fresh", "newitem", "c1", featurestore.BehaviorView, ts+hour)},
		featurestore.Entry{Offset: more[len(more)-1].Offset + 2, Event: ev("f2", "fresh", "i1", "c1", featurestore.BehaviorCart, ts+hour+minute)},
		featurestore.Entry{Offset: more[len(more)-1].Offset + 3, Event: ev("f3", "u0", "newitem", "c1", featurestore.BehaviorView, ts+hour+2*minute)},
	)
	applySplit(t, s, more, []int{50, len(more)})
	if got := frozenState(); got != before {
		t.Errorf("frozen models changed: %s", diffLines(got, before))
	}
	mAfter := mustModels(t, s)
	for name, mb := range mBefore {
		ma := mAfter[name]
		if !ma.Frozen || ma.Version != mb.Version || ma.Examples != mb.Examples || ma.LastEventTS != mb.LastEventTS {
			t.Errorf("model %s frozen: %+v, before %+v", name, ma, mb)
		}
	}
	// Histories moved: u0's newest history item is newitem, fresh has one.
	for user, want := range map[string][]string{"u0": {"newitem"}, "fresh": {"i1", "newitem"}} {
		um, _, err := s.M.User(s.Store, user)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, h := range um.History[:min(len(want), len(um.History))] {
			got = append(got, h.Item)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s's history starts %v, want %v", user, got, want)
		}
		if um.Vec != nil && user == "fresh" {
			t.Errorf("a user first seen while frozen got factors %v", um.Vec)
		}
	}
	for _, m := range []string{recommend.MethodFull, recommend.MethodPopular} {
		for _, user := range []string{"u0", "fresh"} {
			recs := mustRecommend(t, s, user, recommend.Options{K: 20, Method: m, ExcludeSeen: true})
			if ids := recIDs(recs); slices.Contains(ids, "newitem") || len(ids) == 0 || (user == "fresh" && slices.Contains(ids, "i1")) {
				t.Errorf("%s for %s with ExcludeSeen = %v; want items, none seen while frozen", m, user, ids)
			}
		}
	}
	// Thawed, they learn again.
	s.M.Freeze(false)
	end := more[len(more)-1].Offset + 1
	mustApply(t, s, end+2, entries(end,
		ev("g1", "fresh", "newitem", "c1", featurestore.BehaviorView, ts+2*hour),
		ev("g2", "fresh", "i2", "c1", featurestore.BehaviorView, ts+2*hour+minute)))
	if got := frozenState(); got == before {
		t.Error("models did not learn after FreezeModels(false)")
	}
	if m := mustModels(t, s)["mf"]; m.Frozen || m.Examples != mBefore["mf"].Examples+2 {
		t.Errorf("mf after thawing = %+v, want 2 more examples, not frozen", m)
	}
}

// Recommend: a cold user gets K items, filters hold for every method,
// purchased items never come back, reasons name the history item a
// recommendation is similar to.
func TestModelRecommend(t *testing.T) {
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{HistoryCap: 3, PairCap: 3})
	cats := map[string]string{"A": "c1", "B": "c1", "C": "c1", "X": "c1", "D": "c2", "E": "c2", "F": "c2"}
	var evs []featurestore.Event
	for u := range 4 {
		evs = append(evs, buyTogether(fmt.Sprint("b", u), fmt.Sprint("b", u), "A", "B", "c1", t0+int64(u)*hour)...)
	}
	ts := t0 + 5*hour
	for i, item := range []string{"C", "D", "E", "F", "X", "D", "E"} {
		evs = append(evs, ev(fmt.Sprint("v", i), "v", item, cats[item], featurestore.BehaviorView, ts))
		ts += minute
	}
	// u bought A only; w bought A, then viewed C, D, E, which pushed A
	// out of w's model history (HistoryCap 3).
	evs = append(evs, ev("u1", "u", "A", "c1", featurestore.BehaviorPurchase, ts))
	evs = append(evs, ev("w1", "w", "A", "c1", featurestore.BehaviorPurchase, ts))
	for i, item := range []string{"C", "D", "E"} {
		evs = append(evs, ev(fmt.Sprint("w", i+2), "w", item, cats[item], featurestore.BehaviorView, ts+int64(i+1)*minute))
	}
	applyAll(t, s, evs...)
	if um, _, err := s.M.User(s.Store, "w"); err != nil || slices.ContainsFunc(um.History, func(h models.Interaction) bool { return h.Item == "A" }) {
		t.Fatalf("w's history = %+v, %v; the test needs A pushed out", um, err)
	}

	methods := []string{recommend.MethodFull, recommend.MethodPopular, recommend.MethodRecentPopular, recommend.MethodItem2Item, recommend.MethodMF, recommend.MethodUser2User}
	// Every method, user and filter: no purchased item, no excluded or
	// seen one, only the category asked for, no duplicates, at most K.
	seenBy := map[string][]string{"u": {"A"}, "w": {"A", "C", "D", "E"}, "nobody": nil, "v": {"C", "D", "E", "F", "X"}}
	bought := map[string]string{"u": "A", "w": "A"}
	for _, m := range methods {
		for user, seen := range seenBy {
			for _, o := range []recommend.Options{
				{K: 3},
				{K: 20},
				{K: 20, ExcludeSeen: true},
				{K: 20, Exclude: map[string]bool{"B": true, "D": true}},
				{K: 20, Category: "c2"},
				{K: 20, Category: "c1", ExcludeSeen: true, Exclude: map[string]bool{"X": true}},
			} {
				o.Method = m
				recs := mustRecommend(t, s, user, o)
				ids := recIDs(recs)
				if len(ids) > o.K || len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(ids) {
					t.Errorf("%s for %s %+v = %v: more than K or duplicates", m, user, o, ids)
				}
				for _, r := range recs {
					bad := r.Reason == "" || r.ItemID == bought[user] || o.Exclude[r.ItemID] ||
						(o.ExcludeSeen && slices.Contains(seen, r.ItemID)) || (o.Category != "" && cats[r.ItemID] != o.Category)
					if bad {
						t.Errorf("%s for %s %+v returned %+v", m, user, o, r)
					}
				}
				// The full method is never short while items pass the filters.
				if m == recommend.MethodFull {
					want := 0
					for item, cat := range cats {
						if item != bought[user] && !o.Exclude[item] && !(o.ExcludeSeen && slices.Contains(seen, item)) &&
							(o.Category == "" || cat == o.Category) {
							want++
						}
					}
					if want = min(want, o.K); len(ids) != want {
						t.Errorf("full for %s %+v = %v, want %d items", user, o, ids, want)
					}
				}
			}
		}
	}

	// A cold user: K items with reasons, popular first.
	recs := mustRecommend(t, s, "nobody", recommend.Options{K: 3})
	if len(recs) != 3 {
		t.Errorf("full for a cold user = %+v, want 3", recs)
	}
	if recs := mustRecommend(t, s, "nobody", recommend.Options{K: 3, Method: recommend.MethodPopular}); !slices.Equal(recIDs(recs), scoredIDs(mustPopular(t, s, "", 3))) {
		t.Errorf("popular for a cold user = %v, want %v", recIDs(recs), scoredIDs(mustPopular(t, s, "", 3)))
	}
	// u bought A, which B was bought with: B is recommended for that.
	recs = mustRecommend(t, s, "u", recommend.Options{K: 5})
	i := slices.IndexFunc(recs, func(r recommend.Recommendation) bool { return r.ItemID == "B" })
	if i < 0 || recs[i].Reason != "similar to A you bought" {
		t.Errorf("full for u = %+v, want B similar to A you bought", recs)
	}
	// item2item: B first (bought with A by 4 users), then what w viewed
	// after buying A; all for A.
	recs = mustRecommend(t, s, "u", recommend.Options{K: 5, Method: recommend.MethodItem2Item})
	if len(recs) != 4 || recs[0].ItemID != "B" || slices.ContainsFunc(recs, func(r recommend.Recommendation) bool { return r.Reason != "similar to A you bought" }) {
		t.Errorf("item2item for u = %+v, want B first, each similar to A you bought", recs)
	}
	// Users who bought A (the b users) bought B too.
	recs = mustRecommend(t, s, "u", recommend.Options{K: 5, Method: recommend.MethodUser2User})
	if len(recs) == 0 || recs[0].ItemID != "B" || recs[0].Reason != "users like you bought it" {
		t.Errorf("user2user for u = %+v, want B first, users like you bought it", recs)
	}
	if su, err := s.Rec.SimilarUsers("u", 10); err != nil || len(su) != 5 || slices.ContainsFunc(su, func(x recommend.SimilarUser) bool { return x.UserID == "u" || x.Score <= 0 }) {
		t.Errorf("SimilarUsers(u) = %v, %v; want the 4 b users and w", su, err)
	}

	if _, err := s.Rec.Recommend("u", recommend.Options{K: 3, Method: "magic"}); err == nil {
		t.Error("Recommend with an unknown method: no error")
	}
	if recs, err := s.Rec.Recommend("u", recommend.Options{K: 0}); err != nil || len(recs) != 0 {
		t.Errorf("Recommend K=0 = %v, %v; want nothing", recs, err)
	}
}

// Expiry deletes the model records of expired users and items.
func TestModelExpiry(t *testing.T) {
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{})
	evs := []featurestore.Event{
		ev("o1", "old", "gone", "c", featurestore.BehaviorPurchase, t0),
		ev("o2", "old", "i", "c", featurestore.BehaviorView, t0+minute),
	}
	for d := range int64(20) {
		ts := t0 + d*dayMS + hour
		evs = append(evs, ev(fmt.Sprint("u", d), "u", "i", "c", featurestore.BehaviorView, ts), ev(fmt.Sprint("v", d), "u", "j", "c", featurestore.BehaviorView, ts+minute))
	}
	applyAll(t, s, evs...)
	if _, ok := userFactors(t, s)["old"]; !ok {
		t.Fatal("old has no factors before expiry")
	}
	if _, ok := itemFactors(t, s)["gone"]; !ok || len(mustNeighbors(t, s, "gone", 10)) == 0 {
		t.Fatal("gone has no factors or neighbours before expiry")
	}
	items := s.M.ItemCount()

	es, err := s.Expire(s.Now())
	if err != nil || es.Users != 1 || es.Items != 1 {
		t.Fatalf("Expire = %+v, %v; want old and gone expired", es, err)
	}
	uf, itf := userFactors(t, s), itemFactors(t, s)
	if _, ok := uf["old"]; ok || len(uf) != 1 {
		t.Errorf("user factors after expiry: %v, want only u", slices.Sorted(maps.Keys(uf)))
	}
	if _, ok := itf["gone"]; ok || len(itf) != 2 {
		t.Errorf("item factors after expiry: %v, want i and j", slices.Sorted(maps.Keys(itf)))
	}
	for _, k := range [][]byte{[]byte("v/u/old"), []byte("v/i/gone"), []byte("n/gone")} {
		if _, ok, err := s.ReadKey(k); ok || err != nil {
			t.Errorf("%q after expiry: found %v, err %v", k, ok, err)
		}
	}
	if got := mustNeighbors(t, s, "gone", 10); len(got) != 0 {
		t.Errorf("Neighbors(gone) after expiry = %v", got)
	}
	if s.M.ItemCount() != items-1 {
		t.Errorf("ModelItems after expiry = %d, want %d", s.M.ItemCount(), items-1)
	}
	// Neighbour lists of surviving items may still name it (as
	// dropItemModel documents): i's does, but neither the full method nor
	// SimilarItems serve it.
	if !slices.Contains(neighborIDs(mustNeighbors(t, s, "i", 10)), "gone") {
		t.Log("i's neighbour list no longer names gone; the serving checks below are weaker")
	}
	for _, m := range []string{recommend.MethodFull, recommend.MethodMF, recommend.MethodPopular} {
		if ids := recIDs(mustRecommend(t, s, "u", recommend.Options{K: 10, Method: m})); slices.Contains(ids, "gone") {
			t.Errorf("%s for u after expiry = %v, includes the expired item", m, ids)
		}
	}
	if ids := recIDs(mustSimilarItems(t, s, "i", 10)); slices.Contains(ids, "gone") || !slices.Equal(ids, []string{"j"}) {
		t.Errorf("SimilarItems(i) after expiry = %v, want [j]", ids)
	}
	// The store keeps learning from the surviving entities.
	applyAll(t, s, ev("n1", "u", "i", "c", featurestore.BehaviorCart, s.Now()+minute))
	if m := mustModels(t, s)["mf"]; m.Examples != int64(len(evs))+1 {
		t.Errorf("mf examples after expiry and one event = %d, want %d", m.Examples, len(evs)+1)
	}
}

// Regression (was a bug): an expired item stays in the negative-sampling ring, so later
// events draw it as a negative and recreate its item model (a new factor
// table row), which no expiry ever removes again (expiry walks item
// feature records, and the item has none) and which MF then recommends.
func TestModelExpiredItemNotResurrected(t *testing.T) {
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{})
	evs := []featurestore.Event{ev("o1", "old", "gone", "c", featurestore.BehaviorPurchase, t0)}
	for d := range int64(20) {
		ts := t0 + d*dayMS + hour
		evs = append(evs, ev(fmt.Sprint("u", d), "u", "i", "c", featurestore.BehaviorView, ts), ev(fmt.Sprint("v", d), "v", "j", "c", featurestore.BehaviorView, ts+minute))
	}
	applyAll(t, s, evs...)
	if _, err := s.Expire(s.Now()); err != nil {
		t.Fatal(err)
	}
	if _, ok := itemFactors(t, s)["gone"]; ok {
		t.Fatal("gone has factors right after expiry")
	}
	now := s.Now()
	var more []featurestore.Event
	for k := range int64(20) {
		more = append(more, ev(fmt.Sprint("m", k), fmt.Sprint("m", k%3), []string{"i", "j"}[k%2], "c", featurestore.BehaviorView, now+k*minute))
	}
	applyAll(t, s, more...)
	if _, ok := itemFactors(t, s)["gone"]; ok {
		t.Errorf("the expired item gone has an item model again after 20 more events (drawn as a negative from the ring)")
	}
	if _, found, _ := s.Item("gone"); found {
		t.Errorf("gone has a feature record again")
	}
	if ids := recIDs(mustRecommend(t, s, "m0", recommend.Options{K: 10, Method: recommend.MethodMF})); slices.Contains(ids, "gone") {
		t.Errorf("MF recommends the expired item: %v", ids)
	}
}

// Regression (was a bug): a user's history keeps naming an expired item; each later event of
// the user loads the neighbour records of its history items (the ranker's
// context) and flushModels writes back every record it loaded, so an
// empty n/<item> record reappears for the expired item and is never
// deleted again.
func TestModelExpiredNeighborRecordNotRewritten(t *testing.T) {
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{})
	evs := []featurestore.Event{ev("k0", "keep", "gone", "c", featurestore.BehaviorView, t0)}
	for d := range int64(20) {
		evs = append(evs, ev(fmt.Sprint("k", d+1), "keep", "i", "c", featurestore.BehaviorView, t0+d*dayMS+hour))
	}
	applyAll(t, s, evs...)
	if es, err := s.Expire(s.Now()); err != nil || es.Items != 1 || es.Users != 0 {
		t.Fatalf("Expire = %+v, %v; want gone expired, keep kept", es, err)
	}
	if _, ok, _ := s.ReadKey([]byte("n/gone")); ok {
		t.Fatal("n/gone right after expiry")
	}
	applyAll(t, s, ev("k99", "keep", "j", "c", featurestore.BehaviorView, s.Now()+minute))
	if v, ok, _ := s.ReadKey([]byte("n/gone")); ok {
		t.Errorf("n/gone = %x written again by an event of a user whose history names it", v)
	}
}

// Regression (was a bug): user and item factors keep the length they were created with, but
// applyModels pairs them regardless: after the store is reopened with
// another models.dim, the first event of an existing user with a new item
// panics in sgdStep (index out of range) instead of Open reporting the
// mismatch or the factors being re-initialised.
func TestModelDimChangeOnReopen(t *testing.T) {
	fs := vfs.NewMem()
	s := openModelStore(t, fs, "db", models.Options{Dim: 8})
	applyAll(t, s, ev("a", "u", "i0", "c", featurestore.BehaviorView, t0), ev("b", "u", "i1", "c", featurestore.BehaviorView, t0+minute))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := storetest.Open(fs, "db", models.Options{Dim: 4}, 0)
	if err != nil {
		return // refusing to open is a fine answer
	}
	defer s.Close()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Apply after reopening with Dim 4 panicked: %v", r)
		}
	}()
	if _, err := s.Apply(3, entries(2, ev("c", "u", "i2", "c", featurestore.BehaviorView, t0+2*minute))); err != nil {
		return
	}
	for _, c := range []struct {
		name string
		f    map[string][]float32
	}{{"user", userFactors(t, s)}, {"item", itemFactors(t, s)}} {
		for id, v := range c.f {
			if len(v) != 4 {
				t.Errorf("%s %s has %d factors, want 4", c.name, id, len(v))
			}
		}
	}
}

// With the ranker trained on a sample of events, the model state still
// depends only on the events: any batch split gives the same tables; and
// the ranker learns from about that share of the events.
func TestRankerSampleDeterminism(t *testing.T) {
	log := modelStream(2, 400)
	n := len(log)
	opts := smallModels
	opts.RankerSample = 0.3
	ref := openModelStore(t, vfs.NewMem(), "db", opts)
	applySplit(t, ref, log, []int{n})
	want := dumpAll(t, ref, dumpUsers, dumpItems)
	full := openModelStore(t, vfs.NewMem(), "db", smallModels)
	applySplit(t, full, log, []int{n})
	all, sampled := mustModels(t, full)["ranker"].Examples, mustModels(t, ref)["ranker"].Examples
	// Every cart, fav and purchase trains the ranker; 30% of the views do.
	var views int
	for _, e := range log {
		if e.Event.Behavior == featurestore.BehaviorView {
			views++
		}
	}
	share := (float64(n-views) + 0.3*float64(views)) / float64(n)
	if views == 0 || views == n {
		t.Fatalf("the stream has %d views of %d events; it cannot test the sample", views, n)
	}
	if r := float64(sampled) / float64(all); r < share-0.1 || r > share+0.1 {
		t.Errorf("ranker examples %d with a 0.3 sample of views against %d without: share %.2f, want about %.2f", sampled, all, r, share)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	var ends []int
	for p := 0; p < n; {
		p = min(n, p+1+rng.IntN(30))
		ends = append(ends, p)
	}
	s := openModelStore(t, vfs.NewMem(), "db", opts)
	applySplit(t, s, log, ends)
	if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
		t.Errorf("sampled ranker: state after %d batches differs from one batch: %s", len(ends), diffLines(got, want))
	}
}

// The writer's records, the records read back through merges, and the
// records after flushes and a full compaction are the same, and a store
// reopened on them goes on exactly like the one that wrote them.
func TestNeighborDeltasCompact(t *testing.T) {
	log := modelStream(3, 400)
	n := len(log)
	ref := openModelStore(t, vfs.NewMem(), "db", smallModels)
	applySplit(t, ref, log, []int{n})
	want := dumpAll(t, ref, dumpUsers, dumpItems)

	fs := vfs.NewMem()
	s := openModelStore(t, fs, "db", smallModels)
	var ends []int
	for p := 0; p < n; p += 7 {
		ends = append(ends, min(n, p+7))
	}
	applySplit(t, s, log, ends)
	// The writer's form matches what a reader decodes.
	if n, err := s.M.CheckWriterRecords(); err != nil {
		t.Fatal(err)
	} else if n < 10 {
		t.Fatalf("the writer holds %d neighbour records; the stream trains too little", n)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
		t.Errorf("after 7-event batches and a compaction: %s", diffLines(got, want))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openModelStore(t, fs, "db", smallModels)
	more := modelStream(4, 80)
	for i := range more {
		more[i].Offset += log[n-1].Offset + 1
	}
	applySplit(t, s, more, []int{30, len(more)})
	applySplit(t, ref, more, []int{len(more)})
	if got, want := dumpAll(t, s, dumpUsers, dumpItems), dumpAll(t, ref, dumpUsers, dumpItems); got != want {
		t.Errorf("after reopening on compacted records: %s", diffLines(got, want))
	}
}

// Re-engagements train the history weights by pairs of the user's own
// items and nothing else: the pointwise weights, and so every list
// without the user's items (discovery), are those of a ranker without
// pairs; among the user's items the mean logit stays the pointwise one
// while their order changes.
func TestRankerHistoryPairs(t *testing.T) {
	opts := models.Options{Negatives: 3, RankerWindow: 200, PublishEvery: 100, RankerSample: 1}
	without := opts
	without.RankerPairs = -1
	a := openModelStore(t, vfs.NewMem(), "db", without)
	b := openModelStore(t, vfs.NewMem(), "db", opts)
	evs := learnableStream(600)
	applyAll(t, a, evs...)
	applyAll(t, b, evs...)
	_, wa, va := a.M.RankerWeights()
	names, wb, vb := b.M.RankerWeights()
	if va != vb || va == 0 || !slices.Equal(wa, wb) {
		t.Fatalf("pointwise weights with pairs v%d %v, without v%d %v: want equal", vb, wb, va, wa)
	}
	if hw := a.M.RankerHistoryWeights(); slices.ContainsFunc(hw, func(x float64) bool { return x != 0 }) {
		t.Errorf("history weights without pairs = %v, want zeros", hw)
	}
	hw := b.M.RankerHistoryWeights()
	if len(hw) != len(names) || !slices.ContainsFunc(hw, func(x float64) bool { return x != 0 }) {
		t.Fatalf("history weights = %v, want some non-zero", hw)
	}
	for _, f := range []string{"bias", "seen"} { // equal on both sides of every pair
		if x := hw[slices.Index(names, f)]; x != 0 {
			t.Errorf("history weight of %s = %v, want 0", f, x)
		}
	}
	logit := func(p float64) float64 { return math.Log(p / (1 - p)) }
	reordered := 0
	for u := range 10 {
		user := fmt.Sprint("u", u)
		disc := recommend.Options{K: 20, ExcludeSeen: true}
		if ga, gb := mustRecommend(t, a, user, disc), mustRecommend(t, b, user, disc); !slices.Equal(ga, gb) {
			t.Errorf("%s: discovery with pairs %v, without %v", user, gb, ga)
		}
		// K past every candidate: the user's own items are all listed.
		own := func(s *testStore) (ids []string, mean float64) {
			hist, err := s.Rec.UserHistory(user, 100)
			if err != nil {
				t.Fatal(err)
			}
			mine := make(map[string]bool)
			for _, h := range hist {
				mine[h.ItemID] = true
			}
			for _, r := range mustRecommend(t, s, user, recommend.Options{K: 1000}) {
				if mine[r.ItemID] {
					ids = append(ids, r.ItemID)
					mean += logit(r.Score)
				}
			}
			return ids, mean / float64(len(ids))
		}
		ia, ma := own(a)
		ib, mb := own(b)
		if len(ia) < 2 || len(ia) != len(ib) || math.Abs(ma-mb) > 1e-9 {
			t.Errorf("%s: own items %v (mean logit %v) with pairs, %v (%v) without: want the same items and mean", user, ib, mb, ia, ma)
		}
		if !slices.Equal(ia, ib) {
			reordered++
		}
	}
	if reordered == 0 {
		t.Error("the history weights reordered no user's own items")
	}
}

// neighborScores returns every item's neighbours and similarities.
func neighborScores(t testing.TB, s *testStore) map[string][]models.Neighbor {
	t.Helper()
	out := make(map[string][]models.Neighbor)
	if err := s.M.ScanItemNeighbors(func(item string, ns []models.Neighbor) error {
		out[item] = ns
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A data dir learned with one decay half-life and reopened with another
// (as one written before the default changed from 7 to 30 days is) has its
// neighbour records converted once: as of the newest event the
// similarities are what they were, they stay finite as events go on, and
// a second reopen converts nothing again.
func TestDecayHalfLifeChangeRescales(t *testing.T) {
	fs := vfs.NewMem()
	log := modelStream(5, 400)
	old := smallModels
	old.DecayHalfLife = 7 * 24 * time.Hour
	s := openModelStore(t, fs, "db", old)
	applySplit(t, s, log[:300], []int{300})
	want := neighborScores(t, s)
	if len(want) == 0 {
		t.Fatal("no neighbours learned")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check := func(what string, got map[string][]models.Neighbor, want map[string][]models.Neighbor) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d items with neighbours, want %d", what, len(got), len(want))
		}
		for item, ws := range want {
			gs := got[item]
			if len(gs) != len(ws) {
				t.Fatalf("%s: item %s has %d neighbours, want %d", what, item, len(gs), len(ws))
			}
			for i := range ws {
				g, w := gs[i], ws[i]
				if g.ItemID != w.ItemID || math.Abs(g.Score-w.Score) > 1e-9*math.Abs(w.Score) {
					t.Fatalf("%s: item %s neighbour %d is %s=%v, want %s=%v", what, item, i, g.ItemID, g.Score, w.ItemID, w.Score)
				}
			}
		}
	}
	newer := smallModels
	newer.DecayHalfLife = 30 * 24 * time.Hour
	s, err := storetest.Open(fs, "db", newer, 0)
	if err != nil {
		t.Fatal(err)
	}
	check("reopened with 30 days", neighborScores(t, s), want)
	applySplit(t, s, log[300:], []int{100})
	after := neighborScores(t, s)
	for item, ns := range after {
		for _, n := range ns {
			if math.IsNaN(n.Score) || math.IsInf(n.Score, 0) || n.Score < 0 {
				t.Fatalf("after more events: item %s neighbour %s has similarity %v", item, n.ItemID, n.Score)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = storetest.Open(fs, "db", newer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("reopened again with 30 days", neighborScores(t, s), after)
}

// The readers' caches hold the committed records after every batch: the
// cached records a batch changes take their new values at the publication
// (readers find them without reading Pebble again), and none is older
// than the committed one.
func TestReaderCachesReplacedAtPublication(t *testing.T) {
	log := modelStream(5, 600)
	s := openModelStore(t, vfs.NewMem(), "db", smallModels)
	read := func() {
		for u := range 9 { // u8 has no model: its absence is cached
			if _, _, err := s.M.User(s.Store, fmt.Sprint("u", u)); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 17 {
			id := fmt.Sprint("i", i)
			if _, _, err := s.M.Item(s.Store, id); err != nil {
				t.Fatal(err)
			}
			if _, err := s.M.Neighbors(s.Store, id, 3); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := 0
	for k := 0; p < len(log); k++ {
		q := min(len(log), p+50)
		mustApply(t, s, log[q-1].Offset+1, log[p:q])
		p = q
		n, err := s.M.CheckReaderCaches()
		if err != nil {
			t.Fatalf("after batch %d: %v", k, err)
		}
		h0, m0 := s.M.ReaderLookups()
		read()
		h1, m1 := s.M.ReaderLookups()
		if k == 0 {
			continue
		}
		if n != 9+2*17 {
			t.Fatalf("after batch %d: the readers' caches hold %d records, want %d", k, n, 9+2*17)
		}
		if m1 != m0 {
			t.Fatalf("after batch %d: %d of %d lookups missed the readers' caches", k, m1-m0, h1-h0+m1-m0)
		}
	}
}
