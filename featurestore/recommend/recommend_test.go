package recommend_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/storetest"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
)

// The recommender's methods and filters over a store with models are
// tested in featurestore/models (models_test.go), where the models are;
// here are the parts of the seen set (exclude_seen) and the contexts the
// recommender shares between requests.

// exclude_seen drops every item the user touched, not only the newest ones
// the model history (50) and recent items (20) hold.
func TestExcludeSeenPastHistoryCap(t *testing.T) {
	s := storetest.OpenT(t, vfs.NewMem(), "db", models.Options{}, 0)
	var evs []featurestore.Event
	ts := storetest.T0
	for i := range 40 { // other users' items: the only ones left to recommend
		for u := range 3 {
			evs = append(evs, storetest.Ev(fmt.Sprintf("o%d-%d", i, u), fmt.Sprintf("o%d", u), fmt.Sprintf("x%d", i), "c", featurestore.BehaviorView, ts))
			ts++
		}
	}
	var touched []string
	for i := range 300 {
		item := fmt.Sprintf("h%d", i)
		touched = append(touched, item)
		evs = append(evs, storetest.Ev("h"+item, "heavy", item, "c", featurestore.BehaviorView, ts), storetest.Ev("n"+item, "nb", item, "c", featurestore.BehaviorCart, ts+1))
		ts += 1000
	}
	for i := 0; i < len(evs); i += 97 {
		storetest.ApplyAll(t, s.Store, evs[i:min(i+97, len(evs))]...)
	}
	seen, err := s.SeenItems("heavy", s.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := slices.Sorted(maps.Keys(seen)), slices.Sorted(slices.Values(touched)); !slices.Equal(got, want) {
		t.Fatalf("seen set of heavy has %d items, want the %d touched", len(got), len(want))
	}
	for _, method := range []string{recommend.MethodFull, recommend.MethodPopular, recommend.MethodItem2Item, recommend.MethodMF, recommend.MethodUser2User, recommend.MethodRecentPopular} {
		recs := storetest.MustRecommend(t, s, "heavy", recommend.Options{K: 100, ExcludeSeen: true, Method: method})
		for _, r := range recs {
			if slices.Contains(touched, r.ItemID) {
				t.Errorf("%s with ExcludeSeen recommended %s, which heavy touched", method, r.ItemID)
			}
		}
		if method == recommend.MethodFull && len(recs) != 40 {
			t.Errorf("full with ExcludeSeen gave %d items, want the 40 untouched", len(recs))
		}
	}
	// Without the filter the old items come back.
	recs := storetest.MustRecommend(t, s, "heavy", recommend.Options{K: 100})
	if !slices.ContainsFunc(recs, func(r recommend.Recommendation) bool { return slices.Contains(touched[:200], r.ItemID) }) {
		t.Errorf("without ExcludeSeen no old touched item is recommended: %v", storetest.RecIDs(recs))
	}
}

// Items touched before now − SeenTTL may be recommended again; newer ones
// are not.
func TestExcludeSeenTTL(t *testing.T) {
	s := storetest.OpenT(t, vfs.NewMem(), "db", models.Options{}, 0)
	t0, day := storetest.T0, storetest.Day
	storetest.ApplyAll(t, s.Store, storetest.Ev("a", "u", "old", "c", featurestore.BehaviorCart, t0), storetest.Ev("b", "v", "old", "c", featurestore.BehaviorView, t0+1))
	storetest.ApplyAll(t, s.Store, storetest.Ev("c", "u", "new", "c", featurestore.BehaviorView, t0+7*day-1))
	storetest.ApplyAll(t, s.Store, storetest.Ev("d", "v", "other", "c", featurestore.BehaviorView, t0+7*day))
	recs := storetest.RecIDs(storetest.MustRecommend(t, s, "u", recommend.Options{K: 10, ExcludeSeen: true}))
	if !slices.Contains(recs, "old") || slices.Contains(recs, "new") {
		t.Errorf("recommendations = %v, want old (past the TTL) and not new", recs)
	}
}

// rawLearner is the models with one more write in every apply batch, after
// theirs: a way to put a damaged record into the store.
type rawLearner struct {
	*models.Models
	key, value []byte
}

func (l *rawLearner) Begin(r *featurestore.BatchRecords) featurestore.LearnBatch {
	return rawBatch{l.Models.Begin(r), l}
}

type rawBatch struct {
	featurestore.LearnBatch
	l *rawLearner
}

func (b rawBatch) Write(pb *pebble.Batch) error {
	if err := b.LearnBatch.Write(pb); err != nil {
		return err
	}
	return pb.Set(b.l.key, b.l.value, nil)
}

// A recommendation with exclude_seen over a damaged seen record fails
// with ErrCorrupt.
func TestExcludeSeenCorruptRecord(t *testing.T) {
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := storetest.T0
	// The seen record of user u and the day of t0 (see featurestore/seen.go),
	// truncated.
	key := binary.BigEndian.AppendUint32([]byte{'s'}, uint32(t0/storetest.Day))
	key = append(append(key, 'u'), 0)
	l := &rawLearner{Models: m, key: key, value: []byte{0x05, 0x09, 'x'}}
	st, err := featurestore.Open("db", featurestore.Options{FS: vfs.NewMem(), Logger: storetest.QuietLogger(), Clock: "event", Learner: l})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	storetest.ApplyAll(t, st, storetest.Ev("a", "u", "i", "c", featurestore.BehaviorView, t0))
	rec := recommend.New(st, m)
	if _, err := rec.Recommend("u", recommend.Options{K: 5, ExcludeSeen: true}); !errors.Is(err, featurestore.ErrCorrupt) {
		t.Errorf("Recommend over a truncated seen record = %v, want ErrCorrupt", err)
	}
	if _, err := rec.Recommend("u", recommend.Options{K: 5}); err != nil {
		t.Errorf("Recommend without exclude_seen = %v; it does not read the seen set", err)
	}
}

// BenchmarkRecommendExcludeSeen asks for the top 10 of a user who touched
// SeenLimit (10,000) distinct items within the TTL, after the usual
// stream: the seen set's bound on the cost of one recommendation.
func BenchmarkRecommendExcludeSeen(b *testing.B) {
	s := storetest.OpenT(b, vfs.NewMem(), "db", models.Options{}, 0)
	rng := rand.New(rand.NewPCG(5, 6))
	batch := make([]featurestore.Entry, storetest.BenchBatch)
	var next uint64
	for range 10 {
		storetest.BenchEvents(rng, batch, &next)
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	heavy := make([]featurestore.Entry, 0, 10_000)
	for i := range 10_000 {
		heavy = append(heavy, featurestore.Entry{Offset: next, Event: featurestore.Event{ID: "h" + strconv.Itoa(i), UserID: "heavy",
			ItemID: "i" + strconv.Itoa(i*5%storetest.BenchItems), CategoryID: "c0", Behavior: featurestore.BehaviorView, TS: storetest.T0 + int64(next)*10}})
		next++
	}
	if _, err := s.Apply(next, heavy); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		seen bool
	}{{"all", false}, {"exclude_seen", true}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				recs, err := s.Rec.Recommend("heavy", recommend.Options{K: 10, ExcludeSeen: bc.seen})
				if err != nil || len(recs) != 10 {
					b.Fatal(len(recs), err)
				}
			}
		})
	}
}

// TestResponsesReadOneVersion checks that a response is computed from one
// state version: every batch moves all of the user's items to a new
// category, and a response computed while a batch is committed to Pebble
// but not yet published names the previous category for all of them.
// Then recommendations run while batches are applied, under the version
// lock: a reentrant read would deadlock here.
func TestResponsesReadOneVersion(t *testing.T) {
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var afterCommit func()
	st, err := featurestore.Open("db", featurestore.Options{FS: vfs.NewMem(), Logger: storetest.QuietLogger(), CacheBytes: 8 << 20, Clock: "event", Learner: m,
		TestingAfterCommit: func() {
			if afterCommit != nil {
				afterCommit()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	rec := recommend.New(st, m)
	const items = 20
	apply := func(k int, user string) error {
		evs := make([]featurestore.Event, items)
		for i := range evs {
			evs[i] = storetest.Ev(fmt.Sprintf("e%d-%d", k, i), user, fmt.Sprintf("i%d", i), fmt.Sprintf("c%d", k), featurestore.BehaviorView, storetest.T0+int64(k)*1000+int64(i))
		}
		next := st.AppliedOffset()
		_, err := st.Apply(next+items, storetest.Entries(next, evs...))
		return err
	}
	// categories returns the one category of u's history items, failing
	// the test when a response names several.
	categories := func() string {
		t.Helper()
		hist, err := rec.UserHistory("u", 50)
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != items {
			t.Fatalf("history of u has %d items, want %d", len(hist), items)
		}
		for _, h := range hist[1:] {
			if h.CategoryID != hist[0].CategoryID {
				t.Fatalf("one history response names categories %s and %s: two versions", hist[0].CategoryID, h.CategoryID)
			}
		}
		return hist[0].CategoryID
	}
	if err := apply(0, "u"); err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= 3; k++ {
		committed, resume := make(chan struct{}), make(chan struct{})
		afterCommit = func() { close(committed); <-resume }
		applied := make(chan error, 1)
		go func() { applied <- apply(k, "w") }()
		<-committed
		if got, want := categories(), fmt.Sprintf("c%d", k-1); got != want {
			t.Errorf("batch %d committed, not published: history names %s, want %s", k, got, want)
		}
		if _, err := rec.Recommend("u", recommend.Options{K: 10, Category: fmt.Sprintf("c%d", k)}); err != nil {
			t.Fatal(err)
		}
		close(resume)
		if err := <-applied; err != nil {
			t.Fatal(err)
		}
		afterCommit = nil
		if got, want := categories(), fmt.Sprintf("c%d", k); got != want {
			t.Errorf("batch %d published: history names %s, want %s", k, got, want)
		}
	}
	const batches = 30
	done := make(chan error, 1)
	go func() {
		for k := 4; k < 4+batches; k++ {
			if err := apply(k, "w"); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
		categories()
		if _, err := rec.Recommend("u", recommend.Options{K: 10}); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkRecommend times one default recommendation (K 20, the full
// method) of a random user after 200 k uniform events over 10 k users and
// 50 k items (the MF index built).
func BenchmarkRecommend(b *testing.B) {
	s := storetest.OpenT(b, vfs.NewMem(), "db", models.Options{}, 0)
	rng := rand.New(rand.NewPCG(7, 8))
	batch := make([]featurestore.Entry, storetest.BenchBatch)
	var next uint64
	for next < 200_000 {
		storetest.BenchEvents(rng, batch, &next)
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	// Pebble's flushes and compactions of the events above would run
	// beside the requests timed: done first.
	if err := s.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := s.Compact(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		user := "u" + strconv.Itoa(rng.IntN(storetest.BenchUsers))
		recs, err := s.Rec.Recommend(user, recommend.Options{K: 20})
		if err != nil || len(recs) != 20 {
			b.Fatal(len(recs), err)
		}
	}
}

// TestCachedModelsFollowCommits checks that the readers' caches of user
// and item models never serve a model older than the published one: each
// read below is cached first, then a batch changes the model.
func TestCachedModelsFollowCommits(t *testing.T) {
	s := storetest.OpenT(t, vfs.NewMem(), "db", models.Options{}, 0)
	storetest.ApplyAll(t, s.Store, storetest.Ev("e1", "u", "a", "c", featurestore.BehaviorView, storetest.T0))
	hist := func() []string {
		h, err := s.Rec.UserHistory("u", 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range h {
			ids = append(ids, e.ItemID)
		}
		return ids
	}
	similar := func() []string {
		su, err := s.Rec.SimilarUsers("u", 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range su {
			ids = append(ids, e.UserID)
		}
		return ids
	}
	if got := hist(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("history of u = %v, want [a]", got)
	}
	if got := similar(); len(got) != 0 {
		t.Fatalf("similar users of u = %v, want none", got)
	}
	// A new item in u's model (the user model), and another user of a (the
	// item model of a).
	storetest.ApplyAll(t, s.Store,
		storetest.Ev("e2", "u", "b", "c", featurestore.BehaviorCart, storetest.T0+1000),
		storetest.Ev("e3", "w", "a", "c", featurestore.BehaviorView, storetest.T0+2000))
	if got := hist(); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("history of u after the batch = %v, want [b a]", got)
	}
	if got := similar(); !slices.Equal(got, []string{"w"}) {
		t.Errorf("similar users of u after the batch = %v, want [w]", got)
	}
}

// The ranking contexts the recommender shares between requests are of one
// state version: a batch that changes the neighbours of the user's history
// (another user's events, older than the newest, so the read clock stays
// where it was) changes the next answer.
func TestContextsOfOneVersion(t *testing.T) {
	s := storetest.OpenT(t, vfs.NewMem(), "db", models.Options{}, 0)
	t0, m := storetest.T0, storetest.Minute
	storetest.ApplyAll(t, s.Store,
		storetest.Ev("a1", "u", "A", "c", featurestore.BehaviorView, t0),
		storetest.Ev("a2", "v", "A", "c", featurestore.BehaviorView, t0+m),
		storetest.Ev("a3", "v", "B", "c", featurestore.BehaviorView, t0+2*m),
		storetest.Ev("a4", "x", "Z", "c", featurestore.BehaviorView, t0+10*m))
	now := s.Now()
	ask := func() []string {
		return storetest.RecIDs(storetest.MustRecommend(t, s, "u", recommend.Options{K: 10, Method: recommend.MethodItem2Item}))
	}
	if got := ask(); !slices.Equal(got, []string{"B"}) {
		t.Fatalf("item2item for u = %v, want [B]", got)
	}
	storetest.ApplyAll(t, s.Store,
		storetest.Ev("b1", "w", "A", "c", featurestore.BehaviorCart, t0+3*m),
		storetest.Ev("b2", "w", "D", "c", featurestore.BehaviorCart, t0+4*m))
	if s.Now() != now {
		t.Fatalf("the read clock moved from %d to %d: the test needs it still", now, s.Now())
	}
	if got := ask(); !slices.Contains(got, "D") {
		t.Errorf("item2item for u after A was paired with D = %v, want D among them", got)
	}
}
