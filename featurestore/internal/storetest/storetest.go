// Package storetest holds what the tests of the models and the
// recommender share: a store opened with its models and recommender on
// any filesystem, and small builders of events. It is imported by tests
// only.
package storetest

import (
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
)

// T0 is an arbitrary event time (2023-11-14T22:13:20Z) the tests count
// from; Minute, Hour and Day are durations in ms.
const (
	T0     = int64(1_700_000_000_000)
	Minute = int64(time.Minute / time.Millisecond)
	Hour   = int64(time.Hour / time.Millisecond)
	Day    = 24 * Hour
)

// Store is a store with its models and their recommender.
type Store struct {
	*featurestore.Store
	M   *models.Models
	Rec *recommend.Recommender
}

// Open opens dir on fs with the event clock (so that reads are as of the
// newest event, whatever the wall clock) and the model options mo;
// seenLimit 0 is the store's default.
func Open(fs vfs.FS, dir string, mo models.Options, seenLimit int) (*Store, error) {
	return open(dir, mo, featurestore.Options{FS: fs, SeenLimit: seenLimit})
}

// open is Open with the store options so, of which it sets the logger,
// the block cache, the clock and the learner.
func open(dir string, mo models.Options, so featurestore.Options) (*Store, error) {
	m, err := models.New(mo)
	if err != nil {
		return nil, err
	}
	so.Logger, so.CacheBytes, so.Clock, so.Learner = QuietLogger(), 8<<20, "event", m
	st, err := featurestore.Open(dir, so)
	if err != nil {
		return nil, err
	}
	return &Store{Store: st, M: m, Rec: recommend.New(st, m)}, nil
}

// OpenT is Open that fails t on an error and closes the store when the
// test ends.
func OpenT(t testing.TB, fs vfs.FS, dir string, mo models.Options, seenLimit int) *Store {
	t.Helper()
	s, err := Open(fs, dir, mo, seenLimit)
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// OpenOptsT is OpenT with the store options so (its FS and cache bounds,
// say); the logger, the block cache, the clock and the learner are
// Open's.
func OpenOptsT(t testing.TB, dir string, mo models.Options, so featurestore.Options) *Store {
	t.Helper()
	s, err := open(dir, mo, so)
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// QuietLogger discards everything.
func QuietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// CheckGoroutines fails the test if, once every later-registered cleanup
// (such as closing the store) has run, more goroutines exist than at the
// call. Register it before opening anything.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		// Goroutines that were told to stop may take a moment to return;
		// yield rather than sleep until they have.
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d goroutines, %d before the test\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			runtime.Gosched()
		}
	})
}

// Ev is an event.
func Ev(id, user, item, cat string, b featurestore.Behavior, ts int64) featurestore.Event {
	return featurestore.Event{ID: id, UserID: user, ItemID: item, CategoryID: cat, Behavior: b, TS: ts}
}

// Entries numbers evs with consecutive offsets from first.
func Entries(first uint64, evs ...featurestore.Event) []featurestore.Entry {
	out := make([]featurestore.Entry, len(evs))
	for i, e := range evs {
		out[i] = featurestore.Entry{Offset: first + uint64(i), Event: e}
	}
	return out
}

// MustApply applies es up to end.
func MustApply(t testing.TB, s *featurestore.Store, end uint64, es []featurestore.Entry) featurestore.ApplyResult {
	t.Helper()
	res, err := s.Apply(end, es)
	if err != nil {
		t.Fatalf("Apply(%d, %d entries): %v", end, len(es), err)
	}
	return res
}

// ApplyAll applies evs as one batch after the store's applied offset.
func ApplyAll(t testing.TB, s *featurestore.Store, evs ...featurestore.Event) {
	t.Helper()
	first := s.AppliedOffset()
	MustApply(t, s, first+uint64(len(evs)), Entries(first, evs...))
}

// ItemIDs lists the ids of scored items.
func ItemIDs(list []featurestore.Scored) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.ItemID
	}
	return out
}

// MustPopular is s.Popular without a skip.
func MustPopular(t testing.TB, s *featurestore.Store, cat string, k int) []featurestore.Scored {
	t.Helper()
	out, err := s.Popular(cat, k, nil)
	if err != nil {
		t.Fatalf("Popular(%q, %d): %v", cat, k, err)
	}
	return out
}

// RecIDs lists the ids of recommendations.
func RecIDs(rs []recommend.Recommendation) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ItemID
	}
	return out
}

// MustRecommend is s.Rec.Recommend.
func MustRecommend(t testing.TB, s *Store, user string, o recommend.Options) []recommend.Recommendation {
	t.Helper()
	rs, err := s.Rec.Recommend(user, o)
	if err != nil {
		t.Fatalf("Recommend(%q, %+v): %v", user, o, err)
	}
	return rs
}

// The shape of the benchmarks' stream.
const (
	BenchBatch = 4096
	BenchUsers = 10_000
	BenchItems = 50_000
	BenchCats  = 500
)

// BenchEvents fills batch with new events numbered from *next, at offsets
// from *next, over BenchUsers users and BenchItems items.
func BenchEvents(rng *rand.Rand, batch []featurestore.Entry, next *uint64) {
	for i := range batch {
		n := *next
		*next++
		item := rng.IntN(BenchItems)
		b := featurestore.BehaviorView
		if r := rng.IntN(100); r < 10 {
			b = featurestore.Behavior(1 + r%3)
		}
		batch[i] = featurestore.Entry{Offset: n, Event: featurestore.Event{
			ID:         "e" + strconv.FormatUint(n, 10),
			UserID:     "u" + strconv.Itoa(rng.IntN(BenchUsers)),
			ItemID:     "i" + strconv.Itoa(item),
			CategoryID: "c" + strconv.Itoa(item%BenchCats),
			Behavior:   b,
			TS:         T0 + int64(n)*10,
		}}
	}
}
