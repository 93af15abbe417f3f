package featurestore

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

const (
	benchBatch = 4096
	benchUsers = 10_000
	benchItems = 50_000
	benchCats  = 500
)

// benchEvents fills batch with new events numbered from *next, at offsets
// from *next, over benchUsers users and benchItems items.
func benchEvents(rng *rand.Rand, batch []Entry, next *uint64) {
	for i := range batch {
		n := *next
		*next++
		item := rng.IntN(benchItems)
		b := BehaviorView
		if r := rng.IntN(100); r < 10 {
			b = Behavior(1 + r%3)
		}
		batch[i] = Entry{Offset: n, Event: Event{
			ID:         "e" + strconv.FormatUint(n, 10),
			UserID:     "u" + strconv.Itoa(rng.IntN(benchUsers)),
			ItemID:     "i" + strconv.Itoa(item),
			CategoryID: "c" + strconv.Itoa(item%benchCats),
			Behavior:   b,
			TS:         t0 + int64(n)*10,
		}}
	}
}

func benchStore(b *testing.B) *Store { return benchStoreWith(b, ModelOptions{}) }

func benchStoreWith(b *testing.B, mo ModelOptions) *Store {
	b.Helper()
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Models: mo})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// BenchmarkApply applies batches of 4096 new events; ns/op is per batch.
func BenchmarkApply(b *testing.B) { benchApply(b, ModelOptions{}) }

// BenchmarkApplyRankerSample is BenchmarkApply with the ranker trained on
// a quarter of the events.
func BenchmarkApplyRankerSample(b *testing.B) { benchApply(b, ModelOptions{RankerSample: 0.25}) }

func benchApply(b *testing.B, mo ModelOptions) {
	s := benchStoreWith(b, mo)
	rng := rand.New(rand.NewPCG(1, 2))
	batch := make([]Entry, benchBatch)
	var next uint64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		benchEvents(rng, batch, &next)
		b.StartTimer()
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(next)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkGet500 reads every feature of 500 random users.
func BenchmarkGet500(b *testing.B) {
	s := benchStore(b)
	rng := rand.New(rand.NewPCG(3, 4))
	batch := make([]Entry, benchBatch)
	var next uint64
	for range 50 { // ~200k events: nearly every user has a record
		benchEvents(rng, batch, &next)
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	idx, err := UserView.Resolve(nil)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 500)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range ids {
			ids[i] = "u" + strconv.Itoa(rng.IntN(benchUsers))
		}
		b.StartTimer()
		rows, err := s.Get(UserView, ids, idx, evNow(s))
		if err != nil || len(rows) != len(ids) {
			b.Fatal(len(rows), err)
		}
	}
}

// BenchmarkRecommendExcludeSeen asks for the top 10 of a user who touched
// SeenLimit (10,000) distinct items within the TTL, after the usual
// stream: the seen set's bound on the cost of one recommendation.
func BenchmarkRecommendExcludeSeen(b *testing.B) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	rng := rand.New(rand.NewPCG(5, 6))
	batch := make([]Entry, benchBatch)
	var next uint64
	for range 10 {
		benchEvents(rng, batch, &next)
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	heavy := make([]Entry, 0, 10_000)
	for i := range 10_000 {
		heavy = append(heavy, Entry{Offset: next, Event: Event{ID: "h" + strconv.Itoa(i), UserID: "heavy",
			ItemID: "i" + strconv.Itoa(i*5%benchItems), CategoryID: "c0", Behavior: BehaviorView, TS: t0 + int64(next)*10}})
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
				recs, err := s.Recommend("heavy", RecommendOptions{K: 10, ExcludeSeen: bc.seen})
				if err != nil || len(recs) != 10 {
					b.Fatal(len(recs), err)
				}
			}
		})
	}
}
