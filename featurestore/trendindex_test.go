package featurestore

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestTrendingIndexMatchesScan applies disordered streams (late events,
// events on hour edges, resent ones, items with equal counts) in random
// batches, with the event clock and with a wall clock that runs behind,
// with and ahead of the events, and after every batch asks the trending
// list (all items, the last hour, weighted) both ways: TopItems, which
// answers from the in-memory index when the window is its pair of hours,
// and the scan of the hourly counts. Both must be the same items with the
// same scores in the same order, as of now, its hour's edges and beyond,
// for several k. The store is reopened midway (the index is rebuilt from
// the counts) and expired at the end.
func TestTrendingIndexMatchesScan(t *testing.T) {
	for _, tc := range []struct {
		clock string
		limit int // of the tree: 6 has it evict and refuse items all along
	}{{"event", 0}, {"wall", 0}, {"event", 6}, {"wall", 6}} {
		clock := tc.clock
		t.Run(fmt.Sprint(clock, "/", tc.limit), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(11, uint64(len(clock)+tc.limit)))
			log := genWindowLog(rng, windowLogSpec{n: 4000, users: 20, items: 80, cats: 4, span: 30 * hour})
			wall := t0
			opts := Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20, Clock: clock,
				Now: func() time.Time { return time.UnixMilli(wall) }, trendLimit: tc.limit}
			s, err := Open("db", opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			maxTS := int64(0)
			compared, indexed := 0, 0
			reopened := false
			check := func() {
				t.Helper()
				v, err := s.Pin()
				if err != nil {
					t.Fatal(err)
				}
				defer v.Release()
				now := v.Now()
				h := floorTo(now, coarseTile)
				for _, asOf := range []int64{now, now - 1, now + 1, h, h - 1, h + coarseTile - 1, h + coarseTile, h - coarseTile, maxTS} {
					for _, k := range []int{0, 1, 5, 6, trendK, 500} {
						got, err := v.TopItems("", asOf, coarseTile, k, true, BehaviorView)
						if err != nil {
							t.Fatal(err)
						}
						want, err := s.topItems(v.snap, "", asOf, coarseTile, k, true, BehaviorView)
						if err != nil {
							t.Fatal(err)
						}
						if !slices.Equal(got, want) {
							t.Fatalf("clock %s, now %d, as of %d (hour %+d ms), k %d:\nindex %v\nscan  %v", clock, now, asOf, asOf-h, k, got, want)
						}
						compared++
						if _, ok := v.Trending(asOf, k); ok {
							indexed++
						}
					}
				}
			}
			for p := 0; p < len(log); {
				q := min(len(log), p+1+rng.IntN(150))
				for _, en := range log[p:q] {
					maxTS = max(maxTS, en.Event.TS)
				}
				// The wall clock: mostly with the events, sometimes behind
				// or ahead of them by up to two hours.
				wall = maxTS + (rng.Int64N(5)-2)*rng.Int64N(coarseTile)
				mustApply(t, s, uint64(q), log[p:q])
				p = q
				check()
				if p > len(log)/2 && !reopened {
					reopened = true
					// Once, midway: the index rebuilt by Open.
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					if s, err = Open("db", opts); err != nil {
						t.Fatal(err)
					}
					check()
				}
			}
			if indexed < compared/6 {
				t.Fatalf("the index answered %d of %d reads: it is not being used", indexed, compared)
			}
			// Expiry deletes the counts of old days; the index follows.
			wall = maxTS + 30*bfDay
			if _, err := s.Expire(maxTS + 30*bfDay); err != nil {
				t.Fatal(err)
			}
			check()
			if got, err := s.TopItems("", maxTS, coarseTile, 10, true, BehaviorView); err != nil || len(got) != 0 {
				t.Fatalf("after expiry: %v, %v; want nothing", got, err)
			}
			t.Logf("%d reads compared, %d from the index", compared, indexed)
		})
	}
}

// trendK is the recommender's trending length, for the test.
const trendK = 20

// TestTrendingIndexTies: items with equal scores come in id order, and
// items that score nothing (a zero weight) are left out, as the scan does.
func TestTrendingIndexTies(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	var log []Entry
	for i, item := range []string{"i3", "i1", "i2", "i1", "i4", "i3", "i2"} {
		log = append(log, Entry{Offset: uint64(i), Event: Event{ID: fmt.Sprint("e", i), UserID: "u1", ItemID: item, Behavior: BehaviorView, TS: t0 + int64(i)}})
	}
	mustApply(t, s, uint64(len(log)), log)
	v, err := s.Pin()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Release()
	got, ok := v.Trending(v.Now(), 3)
	if !ok {
		t.Fatal("the index does not hold the hour of the read clock")
	}
	if ids := scoredIDs(got); !slices.Equal(ids, []string{"i1", "i2", "i3"}) {
		t.Fatalf("trending %v, want i1 i2 i3 (two views each, by id)", got)
	}
}
