package featurestore

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestWindowCacheMatchesTiles applies disordered streams (late events,
// resent ones, events on tile and hour boundaries) in random batches and,
// after every few batches, reads every feature of every user and item
// both ways: Get (online: the materialized window state, built on a miss
// and updated by the writer batch after batch) and GetEach with the same
// time for every row (the tiles). Both must agree on every value and
// time, as of now, just before, within the last hour, a little in the
// future and hours back (the tiles then). A small budget makes the cache
// evict and refuse entries all along; the counters show that entries were
// built, hit and updated.
func TestWindowCacheMatchesTiles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		budget int64
	}{{"default", 0}, {"small", 48 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, uint64(len(tc.name))))
			spec := windowLogSpec{n: 3000, users: 6, items: 30, cats: 3, span: 40 * hour}
			log := genWindowLog(rng, spec)
			s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event", WindowCacheBytes: tc.budget})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			ids := map[*View][]string{}
			maxTS := int64(0)
			reads, bad := 0, 0
			for p := 0; p < len(log); {
				q := min(len(log), p+1+rng.IntN(120))
				mustApply(t, s, uint64(q), log[p:q])
				for _, en := range log[p:q] {
					ev := en.Event
					maxTS = max(maxTS, ev.TS)
					if !slices.Contains(ids[UserView], ev.UserID) {
						ids[UserView] = append(ids[UserView], ev.UserID)
					}
					if !slices.Contains(ids[ItemView], ev.ItemID) {
						ids[ItemView] = append(ids[ItemView], ev.ItemID)
					}
				}
				p = q
				if rng.IntN(3) != 0 && p < len(log) {
					continue
				}
				now := maxTS
				for _, asOf := range []int64{now, now - 1, now - rng.Int64N(hour), now + rng.Int64N(3*bfFine), now - 2*hour - rng.Int64N(hour), bfFloor(now, bfCoarse), bfFloor(now, bfCoarse) - 1} {
					rt := ReadTime{Now: now, AsOf: asOf}
					for _, v := range []*View{UserView, ItemView} {
						want := ids[v]
						// Twice: the first read may build, the second hits.
						for range 2 {
							got, err := s.Get(v, want, allFeatures(v), rt)
							if err != nil {
								t.Fatal(err)
							}
							ts := make([]int64, len(want))
							for i := range ts {
								ts[i] = asOf
							}
							tiles, err := s.GetEach(v, want, allFeatures(v), now, ts)
							if err != nil {
								t.Fatal(err)
							}
							for r := range got {
								reads++
								for j := range got[r].Values {
									g, w := got[r].Values[j], tiles[r].Values[j]
									if !valueEqual(g, w) || g.Float != w.Float {
										bad++
										if bad <= 20 {
											t.Errorf("%s %s %s now %s as of %s: materialized %+v, tiles %+v", v.Name, got[r].ID, v.Features[j].Name, fmtMS(now), fmtMS(asOf), g, w)
										}
									}
								}
							}
						}
					}
				}
			}
			if bad > 0 {
				t.Fatalf("%d of %d rows' values differ", bad, reads)
			}
			w := s.wins
			entries, bytes := w.stats()
			t.Logf("%d rows compared; window state: %d builds, %d hits, %d misses, %d updates; %d entries, %d bytes",
				reads, w.builds.Load(), w.hits.Load(), w.misses.Load(), w.updates.Load(), entries, bytes)
			if w.builds.Load() == 0 || w.hits.Load() == 0 || w.updates.Load() == 0 || (tc.budget == 0 && w.hits.Load() < w.builds.Load()) {
				t.Errorf("the reads exercised too little of the window state")
			}
			if tc.budget > 0 && bytes > tc.budget {
				t.Errorf("window state holds %d bytes, budget %d", bytes, tc.budget)
			}
		})
	}
}

// TestWindowCacheExpiry checks that expiry drops the window state: an
// entity whose records expired reads not_found, not its cached windows.
func TestWindowCacheExpiry(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	var log []Entry
	for i := range 20 {
		log = append(log, Entry{Offset: uint64(i), Event: Event{ID: fmt.Sprint("e", i), UserID: "u1", ItemID: "i1", CategoryID: "c", Behavior: BehaviorView, TS: t0 + int64(i)*bfFine}})
	}
	mustApply(t, s, uint64(len(log)), log)
	rt := ReadTime{Now: t0 + 20*bfFine, AsOf: t0 + 20*bfFine}
	rows, err := s.Get(ItemView, []string{"i1"}, allFeatures(ItemView), rt)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s.wins.stats(); n != 1 || !rows[0].Found {
		t.Fatalf("after a read: %d entries, found %v; want 1, true", n, rows[0].Found)
	}
	if _, err := s.Expire(t0 + 30*bfDay); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.wins.stats(); n != 0 {
		t.Fatalf("after expiry: %d entries, want none", n)
	}
}
