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

// TestWindowSumMemo reads the windows of every materialized entry as of
// random times around and past its newest event, the windows in random
// order, and checks every sum against the same entry without memos: a
// memo is used only where the sum cannot differ (a read as of the newest
// event or later, the same window edges), and replaced when they move.
func TestWindowSumMemo(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	log := genWindowLog(rng, windowLogSpec{n: 2000, users: 5, items: 20, cats: 3, span: 30 * hour})
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	mustApply(t, s, uint64(len(log)), log)
	maxTS := int64(0)
	ids := map[*View][]string{}
	for _, en := range log {
		maxTS = max(maxTS, en.Event.TS)
		for v, id := range map[*View]string{UserView: en.Event.UserID, ItemView: en.Event.ItemID} {
			if !slices.Contains(ids[v], id) {
				ids[v] = append(ids[v], id)
			}
		}
	}
	windows := []int64{hour, 2 * hour, 24 * hour, 7 * 24 * hour, 30 * 60 * 1000}
	memoized := 0
	for _, v := range []*View{UserView, ItemView} {
		if _, err := s.Get(v, ids[v], allFeatures(v), ReadTime{Now: maxTS, AsOf: maxTS}); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids[v] {
			e := s.wins.lookup(winKey{v.kind, id})
			if e == nil {
				t.Fatalf("%s %s: no materialized state after a read", v.Name, id)
			}
			// The same state, never memoized.
			plain := func() *winEntry {
				return &winEntry{coarseLo: e.coarseLo, fineLo: e.fineLo, distLo: e.distLo, coarse: e.coarse, events: e.events, last: e.last}
			}
			for range 400 {
				// Around the newest event, before it and after, and on
				// the edges of 5 minutes and of hours (a window's oldest
				// edge moves a millisecond after the hour of its newest).
				asOf := e.last
				switch r := rng.IntN(6); r {
				case 0:
					asOf -= rng.Int64N(3 * 60_000)
				case 1:
					asOf += rng.Int64N(3 * 60_000)
				case 2, 3:
					g := []int64{bfFine, hour, 24 * hour}[rng.IntN(3)]
					asOf = bfFloor(e.last, g) + g*rng.Int64N(3) + rng.Int64N(3) - 1
				case 4:
					asOf += rng.Int64N(8 * 24 * hour)
				}
				w := windows[rng.IntN(len(windows))]
				if asOf >= e.last {
					memoized++
				}
				if got, want := e.sum(asOf, w), plain().sum(asOf, w); got != want {
					t.Fatalf("%s %s window %d as of %s (newest event %s): memoized %+v, computed %+v", v.Name, id, w, fmtMS(asOf), fmtMS(e.last), got, want)
				}
			}
		}
	}
	if memoized == 0 {
		t.Fatal("no read as of the newest event or later: the memo was not tested")
	}
	t.Logf("%d reads past the newest event", memoized)
}
