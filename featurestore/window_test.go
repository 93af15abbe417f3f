package featurestore

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Tests of the event-time windows: window counts, rates and trends of the
// user and item views, their statuses (expired, not versioned), and the
// top items of categories, against a brute-force recomputation from the
// raw events under the contract's edge rule:
//
//	a window W as of asOf counts the events with lo <= ts <= asOf,
//	lo = floor_g(asOf - W + 1), g = 5 min for W < 12 h, else 1 h;
//	top items resolve both edges to whole hours.
//
// The model below is written from that contract, not from the
// implementation (it does not call windowStart, floorTo or tileSize).

const (
	bfFine   = 5 * 60 * 1000
	bfCoarse = 60 * 60 * 1000
	bfDay    = 24 * bfCoarse
)

// bfFloor floors ts to a multiple of g since the epoch.
func bfFloor(ts, g int64) int64 {
	r := ts % g
	if r < 0 {
		r += g
	}
	return ts - r
}

// bfStart is the oldest event time counted by a window of w ending at asOf.
func bfStart(asOf, w int64) int64 {
	g := int64(bfFine)
	if w >= 12*bfCoarse {
		g = bfCoarse
	}
	return bfFloor(asOf-w+1, g)
}

// bfWeight is the contract's behavior weight.
func bfWeight(b Behavior) float64 {
	switch b {
	case BehaviorView:
		return 1
	case BehaviorFav:
		return 2
	case BehaviorCart:
		return 3
	case BehaviorPurchase:
		return 4
	}
	panic("bad behavior")
}

// wmodel holds the applied events (first occurrence of each id) by entity.
type wmodel struct {
	events []Event
	byUser map[string][]Event
	byItem map[string][]Event
	dups   int
	minTS  int64
	maxTS  int64
}

func newWModel(log []Entry) *wmodel {
	m := &wmodel{byUser: map[string][]Event{}, byItem: map[string][]Event{}, minTS: math.MaxInt64}
	seen := map[string]bool{}
	for _, en := range log {
		e := en.Event
		if seen[e.ID] {
			m.dups++
			continue
		}
		seen[e.ID] = true
		m.events = append(m.events, e)
		m.byUser[e.UserID] = append(m.byUser[e.UserID], e)
		m.byItem[e.ItemID] = append(m.byItem[e.ItemID], e)
		m.minTS, m.maxTS = min(m.minTS, e.TS), max(m.maxTS, e.TS)
	}
	return m
}

func (m *wmodel) entityEvents(v *View, id string) []Event {
	if v.Entity == "user" {
		return m.byUser[id]
	}
	return m.byItem[id]
}

// bfCounts counts evs per behavior in the window w as of asOf.
func bfCounts(evs []Event, asOf, w int64) [numBehaviors]int64 {
	var c [numBehaviors]int64
	lo := bfStart(asOf, w)
	for _, e := range evs {
		if lo <= e.TS && e.TS <= asOf {
			c[e.Behavior]++
		}
	}
	return c
}

func bfWeighted(c [numBehaviors]int64) float64 {
	var s float64
	for b, n := range c {
		s += bfWeight(Behavior(b)) * float64(n)
	}
	return s
}

// bfVersioned lists the aggregations that can be read as of a past time.
func bfVersioned(f *Feature) bool {
	switch f.Agg {
	case AggCount:
		return f.Window > 0
	case AggWeightedCount, AggRate, AggTrend, AggTopItems, AggDistinct:
		return true
	}
	return false
}

// kindApprox marks a want compared with the HyperLogLog tolerance.
const kindApprox Kind = 254

// wantValue is the brute-force expectation of one feature value.
type wantValue struct {
	status Status
	kind   Kind // which field to compare when present; 255: status only
	i      int64
	f      float64
	strs   []string // KindString: any of these
	lo     int64    // windowed counts: the window's oldest event time
}

const statusOnly Kind = 255

// bfFeature computes feature f of the entity whose events are evs, read at rt.
func bfFeature(v *View, f *Feature, evs []Event, rt ReadTime) wantValue {
	if len(evs) == 0 {
		return wantValue{status: StatusNotFound, kind: statusOnly}
	}
	first, last := evs[0].TS, evs[0].TS
	for _, e := range evs {
		first, last = min(first, e.TS), max(last, e.TS)
	}
	ttl := v.TTL.Milliseconds()
	if ttl > 0 && rt.Now-last > ttl {
		return wantValue{status: StatusExpired, kind: statusOnly}
	}
	if !bfVersioned(f) && rt.AsOf < last {
		return wantValue{status: StatusNotVersioned, kind: statusOnly}
	}
	// Data is kept one day past the TTL (whole days are deleted).
	if f.Window > 0 && ttl > 0 && bfStart(rt.AsOf, max(f.Window, f.Long)) < rt.Now-ttl-24*3600*1000 {
		return wantValue{status: StatusExpired, kind: statusOnly}
	}
	w := wantValue{status: StatusPresent, kind: f.Kind}
	switch f.Agg {
	case AggCount:
		if f.Window == 0 {
			for _, e := range evs {
				if e.Behavior == f.Behavior {
					w.i++
				}
			}
			return w
		}
		w.i = bfCounts(evs, rt.AsOf, f.Window)[f.Behavior]
		w.lo = bfStart(rt.AsOf, f.Window)
	case AggWeightedCount:
		w.f = bfWeighted(bfCounts(evs, rt.AsOf, f.Window))
	case AggRate:
		c := bfCounts(evs, rt.AsOf, f.Window)
		w.f = (float64(c[f.Behavior]) + f.PriorStrength*f.PriorMean) / (float64(c[f.Denominator]) + f.PriorStrength)
	case AggTrend:
		ws := bfWeighted(bfCounts(evs, rt.AsOf, f.Window))
		wl := bfWeighted(bfCounts(evs, rt.AsOf, f.Long))
		hs, hl := float64(f.Window)/bfCoarse, float64(f.Long)/bfCoarse
		w.f = (ws/hs + 1) / (wl/hl + 1)
	case AggFirstEventTS:
		w.i = first
	case AggLastEventTS:
		w.i = last
	case AggSecondsSinceLastEvent:
		w.f = float64(rt.AsOf-last) / 1000
	case AggCategoryID:
		// The category of the newest event that names one; any of those
		// at the newest such time (equal times make it ambiguous).
		var ts int64 = math.MinInt64
		for _, e := range evs {
			if e.CategoryID == "" {
				continue
			}
			if e.TS > ts {
				ts, w.strs = e.TS, nil
			}
			if e.TS == ts {
				w.strs = append(w.strs, e.CategoryID)
			}
		}
		if len(w.strs) == 0 {
			return wantValue{status: StatusNotFound, kind: statusOnly}
		}
	case AggDistinct:
		// Hour-resolved at both edges: the hours from the one holding
		// asOf-W+1 to the one holding asOf.
		lo := (rt.AsOf - f.Window + 1) - bfMod(rt.AsOf-f.Window+1, 3600000)
		hi := rt.AsOf - bfMod(rt.AsOf, 3600000) + 3600000
		seen := map[string]bool{}
		for _, e := range evs {
			if e.TS >= lo && e.TS < hi {
				if v.Entity == "user" {
					seen[e.ItemID] = true
				} else {
					seen[e.UserID] = true
				}
			}
		}
		w.kind, w.i = kindApprox, int64(len(seen))
	default:
		w.kind = statusOnly // recent_items, recent_categories, top_categories
	}
	return w
}

func bfMod(a, m int64) int64 { return ((a % m) + m) % m }

func floatClose(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*max(1, math.Abs(a), math.Abs(b))
}

// checkValue returns "" if got matches want, else why not.
func checkValue(got Value, want wantValue, asOf int64) string {
	if got.Status != want.status {
		return fmt.Sprintf("status %v, want %v", got.Status, want.status)
	}
	if want.status != StatusPresent {
		return ""
	}
	switch want.kind {
	case kindApprox:
		if d := math.Abs(float64(got.Int - want.i)); d > max(1, 0.1*float64(want.i)) {
			return fmt.Sprintf("%d, want about %d (HyperLogLog)", got.Int, want.i)
		}
	case KindInt, KindTimestamp:
		if got.Int != want.i {
			return fmt.Sprintf("%d, want %d", got.Int, want.i)
		}
		if want.lo != 0 { // a windowed count: its newest contribution is in the window
			if want.i > 0 && (got.EventTS < want.lo || got.EventTS > asOf) {
				return fmt.Sprintf("%d with event_ts %d outside the window [%d, %d]", got.Int, got.EventTS, want.lo, asOf)
			}
			if want.i == 0 && got.EventTS != 0 {
				return fmt.Sprintf("0 with event_ts %d, want 0", got.EventTS)
			}
		}
	case KindFloat:
		if !floatClose(got.Float, want.f) {
			return fmt.Sprintf("%.12g, want %.12g", got.Float, want.f)
		}
	case KindString:
		if !slices.Contains(want.strs, got.Str) {
			return fmt.Sprintf("%q, want one of %q", got.Str, want.strs)
		}
	}
	return ""
}

// windowLogSpec says what genWindowLog generates.
type windowLogSpec struct {
	n, users, items, cats int
	span                  int64 // most event times are in [t0, t0+span)
}

// genWindowLog builds a log whose event times are spread over spec.span
// (a few percent up to six days earlier, for the 7-day windows), many on or
// next to 5-minute and hour boundaries, arriving in a disordered order:
// sorted by time, then shuffled within runs of up to an hour, with a few
// events delayed by hours and resent (same id and content). The last user
// and the last two items are dormant: they only have events in the first
// day, so that they expire first. Offsets are consecutive from 0.
func genWindowLog(rng *rand.Rand, spec windowLogSpec) []Entry {
	home := make([]string, spec.items)
	for i := range home {
		home[i] = fmt.Sprint("c", rng.IntN(spec.cats))
	}
	evs := make([]Event, 0, spec.n)
	for i := range spec.n {
		user, item := rng.IntN(spec.users), rng.IntN(spec.items)
		ts := t0 + rng.Int64N(spec.span)
		switch {
		case user == spec.users-1 || item >= spec.items-2:
			ts = t0 + rng.Int64N(24*hour)
		case rng.IntN(25) == 0:
			ts = t0 - rng.Int64N(6*bfDay)
		}
		switch rng.IntN(10) {
		case 0:
			ts = bfFloor(ts, bfFine) + rng.Int64N(3) - 1
		case 1:
			ts = bfFloor(ts, bfCoarse) + rng.Int64N(3) - 1
		}
		cat := home[item]
		switch r := rng.IntN(20); {
		case r < 2:
			cat = ""
		case r < 4:
			cat = fmt.Sprint("c", rng.IntN(spec.cats))
		}
		b := BehaviorView
		switch r := rng.IntN(100); {
		case r < 12:
			b = BehaviorCart
		case r < 20:
			b = BehaviorFav
		case r < 30:
			b = BehaviorPurchase
		}
		evs = append(evs, Event{
			ID: fmt.Sprint("e", i), UserID: fmt.Sprint("u", user), ItemID: fmt.Sprint("i", item),
			CategoryID: cat, Behavior: b, TS: ts,
		})
	}
	slices.SortFunc(evs, func(a, b Event) int { return cmp.Compare(a.TS, b.TS) })
	for i := 0; i < len(evs); {
		span := 1 + rng.Int64N(hour)
		j := i + 1
		for j < len(evs) && evs[j].TS-evs[i].TS < span {
			j++
		}
		run := evs[i:j]
		rng.Shuffle(len(run), func(a, b int) { run[a], run[b] = run[b], run[a] })
		i = j
	}
	for range len(evs) / 50 { // stragglers, hours late
		i := rng.IntN(len(evs))
		j := min(len(evs)-1, i+rng.IntN(300))
		e := evs[i]
		copy(evs[i:j], evs[i+1:j+1])
		evs[j] = e
	}
	for range len(evs) / 20 { // resent events
		i := rng.IntN(len(evs))
		j := i + 1 + rng.IntN(len(evs)-i)
		evs = slices.Insert(evs, j, evs[i])
	}
	out := make([]Entry, len(evs))
	for i, e := range evs {
		out[i] = Entry{Offset: uint64(i), Event: e}
	}
	return out
}

// applyInBatches applies log in random batches, some empty, with
// increasing offsets.
func applyInBatches(t *testing.T, rng *rand.Rand, s *Store, log []Entry) ApplyResult {
	t.Helper()
	var total ApplyResult
	for p := 0; p < len(log); {
		q := min(len(log), p+rng.IntN(150))
		res := mustApply(t, s, uint64(q), log[p:q])
		total.Applied += res.Applied
		total.Duplicates += res.Duplicates
		p = q
	}
	return total
}

// windowReadTimes picks the read times of the property test: now = the
// newest event time, as of: now, random times in the past (within 3 days,
// a few much older), tile, hour and day boundaries and the milliseconds
// around them, event times and the milliseconds around them, and times
// that put an event just inside or outside the oldest edge of a window.
// A few reads use a later now, so that entities and windows expire.
func windowReadTimes(rng *rand.Rand, m *wmodel) []ReadTime {
	now := m.maxTS
	var asOfs []int64
	add := func(ts ...int64) {
		for _, x := range ts {
			if x <= now {
				asOfs = append(asOfs, x)
			}
		}
	}
	past := func() int64 { return now - rng.Int64N(3*bfDay) }
	add(now, now-1)
	for range 16 {
		add(past())
	}
	for range 3 {
		add(now - rng.Int64N(now-m.minTS+hour))
	}
	for _, g := range []int64{bfFine, bfFine, bfCoarse, bfDay} {
		for range 3 {
			b := bfFloor(past(), g)
			add(b-1, b, b+1)
		}
	}
	for range 5 {
		e := m.events[rng.IntN(len(m.events))].TS
		add(e-1, e, e+1)
	}
	for _, w := range []int64{hour, 24 * hour, 7 * bfDay} {
		g := int64(bfFine)
		if w >= 12*hour {
			g = bfCoarse
		}
		for range 2 {
			e := m.events[rng.IntN(len(m.events))].TS
			// e is the oldest millisecond of the exact window; e is just
			// outside it; e's tile is just inside / outside the resolved one.
			add(e+w-1, e+w, bfFloor(e, g)+g+w-2, bfFloor(e, g)+g+w-1)
		}
	}
	var rts []ReadTime
	for _, a := range asOfs {
		rts = append(rts, ReadTime{Now: now, AsOf: a})
	}
	for _, d := range []int64{bfDay, 4 * bfDay, 6 * bfDay, 7*bfDay + 1, 9 * bfDay} {
		rts = append(rts, ReadTime{Now: now + d, AsOf: now - rng.Int64N(2*bfDay)})
		rts = append(rts, ReadTime{Now: now + d, AsOf: now})
	}
	return rts
}

// longTTLViews returns the user and item views of the default definitions
// with a 12-day TTL, so that 7-day windows read in the past are present.
func longTTLViews(t *testing.T) (*View, *View) {
	t.Helper()
	src := bytes.ReplaceAll(defaultDefinitions, []byte("ttl: 7d"), []byte("ttl: 12d"))
	if n := bytes.Count(defaultDefinitions, []byte("ttl: 7d")); n != 3 {
		t.Fatalf("features.yaml has %d views with ttl: 7d, the test expects 3", n)
	}
	d, err := ParseDefinitions("features-12d.yaml", src)
	if err != nil {
		t.Fatal(err)
	}
	u, err := d.View("user_features")
	if err != nil {
		t.Fatal(err)
	}
	i, err := d.View("item_features")
	if err != nil {
		t.Fatal(err)
	}
	return u, i
}

// TestWindowProperty applies random disordered streams in random batches
// and compares every feature of the user and item views, read at many
// times, with the brute-force model: the status of every feature, the
// window values (counts, rates, trend), and the values of the non-versioned
// features (lifetime counts, first/last event time, seconds since the last
// event, category id) when they are present.
func TestWindowProperty(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4}
	if testing.Short() {
		seeds = seeds[:2]
	}
	long12U, long12I := longTTLViews(t)
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x717e))
			spec := windowLogSpec{n: 1800 + rng.IntN(400), users: 3 + rng.IntN(4), items: 12 + rng.IntN(16), cats: 2 + rng.IntN(3), span: 72 * hour}
			log := genWindowLog(rng, spec)
			s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			res := applyInBatches(t, rng, s, log)
			m := newWModel(log)
			if res.Applied != len(m.events) || res.Duplicates != m.dups {
				t.Fatalf("Apply: %+v, want %d applied, %d duplicates", res, len(m.events), m.dups)
			}
			users := slices.Sorted(func(yield func(string) bool) {
				for id := range m.byUser {
					if !yield(id) {
						return
					}
				}
			})
			items := slices.Sorted(func(yield func(string) bool) {
				for id := range m.byItem {
					if !yield(id) {
						return
					}
				}
			})
			rts := windowReadTimes(rng, m)

			type read struct {
				v   *View
				ids []string
			}
			reads := []read{
				{UserView, append(slices.Clone(users), "nobody")},
				{ItemView, append(slices.Clone(items), "nothing")},
				{long12U, users},
				{long12I, items},
			}
			var nChecked, nPresent, nBad int
			nonVersioned := map[Status]int{}
			type rowKey struct {
				v  *View
				id string
				rt ReadTime
			}
			got := map[rowKey]Row{}
			for _, rt := range rts {
				for _, rd := range reads {
					rows, err := s.Get(rd.v, rd.ids, allFeatures(rd.v), rt)
					if err != nil {
						t.Fatalf("Get(%s, %+v): %v", rd.v.Name, rt, err)
					}
					for _, row := range rows {
						got[rowKey{rd.v, row.ID, rt}] = row
						evs := m.entityEvents(rd.v, row.ID)
						if row.Found != (len(evs) > 0) {
							t.Errorf("%s %s: found %v, want %v", rd.v.Name, row.ID, row.Found, len(evs) > 0)
						}
						for j := range rd.v.Features {
							f := &rd.v.Features[j]
							want := bfFeature(rd.v, f, evs, rt)
							nChecked++
							if !bfVersioned(f) {
								nonVersioned[want.status]++
							}
							if want.status == StatusPresent {
								nPresent++
							}
							if why := checkValue(row.Values[j], want, rt.AsOf); why != "" {
								nBad++
								if nBad <= 25 {
									t.Errorf("%s %s %s (ttl %v) now=%s asof=%s: %s",
										rd.v.Name, row.ID, f.Name, rd.v.TTL, fmtMS(rt.Now), fmtMS(rt.AsOf), why)
								}
							}
						}
					}
				}
			}
			// A point-in-time join reads every (id, time) at once, in any
			// order, many times per entity: each row as Get reads it.
			for _, rd := range reads {
				byNow := map[int64][]ReadTime{}
				for _, rt := range rts {
					byNow[rt.Now] = append(byNow[rt.Now], rt)
				}
				for now, at := range byNow {
					var ids []string
					var asOf []int64
					for _, rt := range at {
						for _, id := range rd.ids {
							ids, asOf = append(ids, id), append(asOf, rt.AsOf)
						}
					}
					perm := rng.Perm(len(ids))
					pids, pts := make([]string, len(ids)), make([]int64, len(ids))
					for i, p := range perm {
						pids[i], pts[i] = ids[p], asOf[p]
					}
					rows, err := s.GetEach(rd.v, pids, allFeatures(rd.v), now, pts)
					if err != nil {
						t.Fatalf("GetEach(%s): %v", rd.v.Name, err)
					}
					for i, row := range rows {
						want := got[rowKey{rd.v, pids[i], ReadTime{Now: now, AsOf: pts[i]}}]
						if row.ID != pids[i] || row.Found != want.Found {
							t.Fatalf("GetEach %s row %d = %s found %v, want %s found %v", rd.v.Name, i, row.ID, row.Found, pids[i], want.Found)
						}
						for j := range row.Values {
							if !valueEqual(row.Values[j], want.Values[j]) || row.Values[j].Float != want.Values[j].Float {
								nBad++
								if nBad <= 25 {
									t.Errorf("GetEach %s %s %s as of %s = %+v, want %+v as Get reads it", rd.v.Name, pids[i], rd.v.Features[j].Name, fmtMS(pts[i]), row.Values[j], want.Values[j])
								}
							}
						}
					}
				}
			}
			if nBad > 25 {
				t.Errorf("... %d mismatches in all", nBad)
			}
			t.Logf("%d read times, %d values checked, %d present; non-versioned by status %v", len(rts), nChecked, nPresent, nonVersioned)
			if nPresent < nChecked/4 || nonVersioned[StatusPresent] == 0 || nonVersioned[StatusNotVersioned] == 0 || nonVersioned[StatusExpired] == 0 {
				t.Errorf("only %d of %d values present, non-versioned by status %v: the read times test too little",
					nPresent, nChecked, nonVersioned)
			}
		})
	}
}

// allFeatures is the index of every feature of v, in order.
func allFeatures(v *View) []int {
	idx, err := v.Resolve(nil)
	if err != nil {
		panic(err)
	}
	return idx
}

func fmtMS(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// TestWindowDayBoundary: windows whose tiles span a UTC midnight. Tile keys
// are day-major; a scan of one day's tiles once ended at the key of the next
// midnight, which lies in the next day's key space, so it summed every tile
// in between: u1 view_count_24h read 7 here, u2 7.
func TestWindowDayBoundary(t *testing.T) {
	s, _ := newMemStore(t)
	day := int64(19723) * bfDay // 2024-01-01T00:00Z
	mustApply(t, s, 3, entries(0,
		ev("a", "u1", "i1", "c1", BehaviorView, day-2*hour),
		ev("b", "u2", "i2", "c1", BehaviorView, day-2*hour),
		ev("c", "u2", "i2", "c1", BehaviorView, day+2*hour),
	))
	idx, err := UserView.Resolve([]string{"view_count_24h", "view_count_1h"})
	if err != nil {
		t.Fatal(err)
	}
	rt := ReadTime{Now: day + 3*hour, AsOf: day + 3*hour}
	rows, err := s.Get(UserView, []string{"u1", "u2"}, idx, rt)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]int64{{1, 0}, {2, 1}} // u2: c (02:00) is on the 1h window's oldest edge
	for r, row := range rows {
		for j := range idx {
			if got := row.Values[j]; got.Status != StatusPresent || got.Int != want[r][j] {
				t.Errorf("%s %s as of 2024-01-01T03:00Z = %+v, want %d", row.ID, UserView.Features[idx[j]].Name, got, want[r][j])
			}
		}
	}
}

// goldenEvents reads testdata/golden/events.txt: one event a line, "id user
// item category behavior time", category "-" for none, time RFC3339.
func goldenEvents(t *testing.T) []Event {
	t.Helper()
	path := filepath.Join("testdata", "golden", "events.txt")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []Event
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 6 {
			t.Fatalf("%s:%d: want 6 fields, got %q", path, n, line)
		}
		b, ok := ParseBehavior(fs[4])
		if !ok {
			t.Fatalf("%s:%d: bad behavior %q", path, n, fs[4])
		}
		ts, err := time.Parse(time.RFC3339Nano, fs[5])
		if err != nil {
			t.Fatalf("%s:%d: %v", path, n, err)
		}
		cat := fs[3]
		if cat == "-" {
			cat = ""
		}
		evs = append(evs, ev(fs[0], fs[1], fs[2], cat, b, ts.UnixMilli()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

// goldenLine is one line of testdata/golden/expected.txt.
type goldenLine struct {
	n                int
	text             string
	entity, id, feat string
	asOf, now        int64
	want             string
}

func goldenExpectations(t *testing.T) []goldenLine {
	t.Helper()
	path := filepath.Join("testdata", "golden", "expected.txt")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	parseTime := func(n int, s string) int64 {
		ts, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatalf("%s:%d: %v", path, n, err)
		}
		return ts.UnixMilli()
	}
	var out []goldenLine
	for i, line := range strings.Split(string(b), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lhs, rhs, ok := strings.Cut(line, " = ")
		fs := strings.Fields(lhs)
		if !ok || len(fs) < 4 {
			t.Fatalf("%s:%d: want ENTITY ID FEATURE asof=TIME ... = VALUE, got %q", path, n, line)
		}
		g := goldenLine{n: n, text: line, entity: fs[0], id: fs[1], feat: fs[2], asOf: -1, want: strings.TrimSpace(rhs)}
		for _, kv := range fs[3:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "asof":
				g.asOf = parseTime(n, v)
			case "now":
				g.now = parseTime(n, v)
			default:
				t.Fatalf("%s:%d: unknown attribute %q", path, n, kv)
			}
		}
		if g.asOf < 0 {
			t.Fatalf("%s:%d: asof= is required", path, n)
		}
		if g.now == 0 {
			g.now = g.asOf
		}
		out = append(out, g)
	}
	return out
}

// parseQuotient parses "x" or "x/y" as a float.
func parseQuotient(s string) (float64, error) {
	num, den, isQ := strings.Cut(s, "/")
	a, err := strconv.ParseFloat(num, 64)
	if err != nil || !isQ {
		return a, err
	}
	b, err := strconv.ParseFloat(den, 64)
	return a / b, err
}

// TestWindowGolden applies testdata/golden/events.txt in file order, one
// event per Apply, and checks each line of testdata/golden/expected.txt,
// whose values are worked out by hand.
func TestWindowGolden(t *testing.T) {
	evs := goldenEvents(t)
	s, _ := newMemStore(t)
	var dups int
	ids := map[string]bool{}
	for i, e := range evs {
		res := mustApply(t, s, uint64(i)+1, entries(uint64(i), e))
		dups += res.Duplicates
		if ids[e.ID] != (res.Duplicates == 1) {
			t.Errorf("event %d (%s): Apply = %+v, duplicate %v", i, e.ID, res, ids[e.ID])
		}
		ids[e.ID] = true
	}
	if st := s.Stats(); st.Events != int64(len(ids)) || st.Duplicates != int64(len(evs)-len(ids)) {
		t.Errorf("Stats = %+v, want %d events, %d duplicates", st, len(ids), len(evs)-len(ids))
	}
	views := map[string]*View{"user": UserView, "item": ItemView, "category": must(defaults.View("category_features"))}
	lines := goldenExpectations(t)
	if len(lines) < 20 {
		t.Fatalf("only %d expectations", len(lines))
	}
	for _, g := range lines {
		t.Run(fmt.Sprintf("%d_%s_%s_%s", g.n, g.entity, g.id, g.feat), func(t *testing.T) {
			v, ok := views[g.entity]
			if !ok {
				t.Fatalf("line %d: unknown entity %q", g.n, g.entity)
			}
			idx, err := v.Resolve([]string{g.feat})
			if err != nil {
				t.Fatalf("line %d: %v", g.n, err)
			}
			f := &v.Features[idx[0]]
			rows, err := s.Get(v, []string{g.id}, idx, ReadTime{Now: g.now, AsOf: g.asOf})
			if err != nil {
				t.Fatalf("line %d: Get: %v", g.n, err)
			}
			got := rows[0].Values[0]
			fail := func(format string, args ...any) {
				t.Helper()
				t.Errorf("expected.txt:%d: %s\n got %s (%+v)", g.n, g.text, fmt.Sprintf(format, args...), got)
			}
			for _, st := range []Status{StatusNotFound, StatusExpired, StatusNotVersioned} {
				if g.want == st.String() {
					if got.Status != st {
						fail("status %v", got.Status)
					}
					return
				}
			}
			if got.Status != StatusPresent {
				fail("status %v", got.Status)
				return
			}
			switch f.Kind {
			case KindInt:
				want, err := strconv.ParseInt(g.want, 10, 64)
				if err != nil {
					t.Fatalf("line %d: %v", g.n, err)
				}
				if got.Int != want {
					fail("%d", got.Int)
				}
			case KindTimestamp:
				ts, err := time.Parse(time.RFC3339Nano, g.want)
				if err != nil {
					t.Fatalf("line %d: %v", g.n, err)
				}
				if got.Int != ts.UnixMilli() {
					fail("%s", fmtMS(got.Int))
				}
			case KindFloat:
				want, err := parseQuotient(g.want)
				if err != nil {
					t.Fatalf("line %d: %v", g.n, err)
				}
				if !floatClose(got.Float, want) {
					fail("%.12g (want %.12g)", got.Float, want)
				}
			case KindString:
				if got.Str != g.want {
					fail("%q", got.Str)
				}
			case KindStringList:
				inner, ok := strings.CutPrefix(g.want, "[")
				inner, ok2 := strings.CutSuffix(inner, "]")
				if !ok || !ok2 {
					t.Fatalf("line %d: want a list [a,b], got %q", g.n, g.want)
				}
				var want []string
				if inner != "" {
					want = strings.Split(inner, ",")
				}
				if !slices.Equal(got.List, want) {
					fail("%v", got.List)
				}
			}
		})
	}
}

// bfTop is the brute-force top items: the k items of category cat ("" for
// all) by score over the hours from the one holding asOf-w+1 to the one
// holding asOf, the score being the weighted count or the count of by;
// ties broken by item id ascending; items scoring 0 left out.
func bfTop(evs []Event, cat string, asOf, w int64, k int, weighted bool, by Behavior) []Scored {
	lo, hi := bfFloor(asOf-w+1, bfCoarse), bfFloor(asOf, bfCoarse)+bfCoarse
	scores := map[string]float64{}
	for _, e := range evs {
		if (cat != "" && e.CategoryID != cat) || e.TS < lo || e.TS >= hi {
			continue
		}
		if weighted {
			scores[e.ItemID] += bfWeight(e.Behavior)
		} else if e.Behavior == by {
			scores[e.ItemID]++
		}
	}
	var out []Scored
	for id, sc := range scores {
		out = append(out, Scored{ItemID: id, Score: sc})
	}
	slices.SortFunc(out, func(a, b Scored) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return strings.Compare(a.ItemID, b.ItemID)
	})
	return out[:min(k, len(out))]
}

// TestTopItems checks top_items of the category view through Store.Get and
// Store.TopItems, for categories and the global list, against bfTop.
func TestTopItems(t *testing.T) {
	catView := must(defaults.View("category_features"))
	var ties int
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x70b))
			log := genWindowLog(rng, windowLogSpec{n: 1500, users: 5, items: 25 + rng.IntN(10), cats: 3 + rng.IntN(2), span: 72 * hour})
			s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			applyInBatches(t, rng, s, log)
			m := newWModel(log)
			catSet := map[string]bool{}
			for _, e := range m.events {
				if e.CategoryID != "" {
					catSet[e.CategoryID] = true
				}
			}
			cats := append(slices.Sorted(func(yield func(string) bool) {
				for c := range catSet {
					if !yield(c) {
						return
					}
				}
			}), "no-such-category")

			now := m.maxTS
			asOfs := []int64{now, now - 1, bfFloor(now, hour), bfFloor(now, hour) - 1}
			for range 12 {
				asOfs = append(asOfs, now-rng.Int64N(3*bfDay))
			}
			for range 6 {
				h := bfFloor(now-rng.Int64N(3*bfDay), hour)
				asOfs = append(asOfs, h-1, h, h+1)
			}
			countTies := func(l []Scored) {
				for i := 1; i < len(l); i++ {
					if l[i].Score == l[i-1].Score {
						ties++
					}
				}
			}
			for _, asOf := range asOfs {
				// Through the category view, read within the TTL.
				rt := ReadTime{Now: now, AsOf: asOf}
				rows, err := s.Get(catView, cats, allFeatures(catView), rt)
				if err != nil {
					t.Fatal(err)
				}
				for _, row := range rows {
					found := false
					for j := range catView.Features {
						f := &catView.Features[j]
						want := bfTop(m.events, row.ID, asOf, f.Window, f.K, f.Weighted, f.Behavior)
						countTies(want)
						got := row.Values[j]
						found = found || len(want) > 0
						if len(want) == 0 {
							// An empty list reads not_found when every requested
							// feature of the row is empty, else present and empty.
							if (got.Status != StatusNotFound && got.Status != StatusPresent) || len(got.List) != 0 {
								t.Errorf("Get %s %s asof=%s = %+v, want not_found or an empty list", row.ID, f.Name, fmtMS(asOf), got)
							}
							continue
						}
						if got.Status != StatusPresent || !slices.Equal(got.List, scoredIDs(want)) {
							t.Errorf("Get %s %s asof=%s = %v %v, want %v", row.ID, f.Name, fmtMS(asOf), got.Status, got.List, want)
						}
					}
					if row.Found != found {
						t.Errorf("Get %s asof=%s: found %v, want %v", row.ID, fmtMS(asOf), row.Found, found)
					}
					for j, v := range row.Values {
						if (v.Status == StatusNotFound) == found {
							t.Errorf("Get %s %s asof=%s: status %v in a row found=%v", row.ID, catView.Features[j].Name, fmtMS(asOf), v.Status, found)
						}
					}
				}
				// Directly, with the global list and other windows, k and scores.
				for _, cat := range append([]string{""}, cats...) {
					type q struct {
						w        int64
						k        int
						weighted bool
						by       Behavior
					}
					qs := []q{{hour, 20, true, 0}}
					for range 3 {
						qs = append(qs, q{
							w:        []int64{hour, 2 * hour, 5 * hour, 24 * hour, 7 * bfDay}[rng.IntN(5)],
							k:        []int{1, 2, 5, 20, 1000}[rng.IntN(5)],
							weighted: rng.IntN(2) == 0,
							by:       Behavior(rng.IntN(int(numBehaviors))),
						})
					}
					for _, q := range qs {
						got, err := s.TopItems(cat, asOf, q.w, q.k, q.weighted, q.by)
						if err != nil {
							t.Fatal(err)
						}
						want := bfTop(m.events, cat, asOf, q.w, q.k, q.weighted, q.by)
						countTies(want)
						ok := len(got) == len(want)
						for i := 0; ok && i < len(got); i++ {
							ok = got[i].ItemID == want[i].ItemID && floatClose(got[i].Score, want[i].Score)
						}
						if !ok {
							t.Errorf("TopItems(%q, asof=%s, w=%v, k=%d, weighted=%v, by=%v) =\n %v\nwant\n %v",
								cat, fmtMS(asOf), time.Duration(q.w)*time.Millisecond, q.k, q.weighted, q.by, got, want)
						}
					}
				}
			}
			// Past the TTL the category features are expired.
			rows, err := s.Get(catView, cats[:1], allFeatures(catView), ReadTime{Now: now + 8*bfDay, AsOf: now})
			if err != nil {
				t.Fatal(err)
			}
			for j, v := range rows[0].Values {
				if v.Status != StatusExpired {
					t.Errorf("Get %s %s now=asof+8d = %+v, want expired", cats[0], catView.Features[j].Name, v)
				}
			}
		})
	}
	if ties == 0 {
		t.Errorf("no ties in the expected lists: the tie break is untested")
	}
	t.Logf("%d ties in the expected lists", ties)
}

// A read as of a time at or before 1970 (a point-in-time spine row with
// ts -5) ends at once with nothing counted: the windows reach back past
// 0, where no tile can be, and the unsigned day arithmetic of the tile
// scan must not wrap around (it once looped without end, allocating an
// iterator per day).
func TestWindowsAsOfBefore1970(t *testing.T) {
	s, _ := newMemStore(t)
	mustApply(t, s, 1, entries(0, ev("e1", "u1", "i1", "c1", BehaviorView, t0)))
	v, err := s.Definitions().View("user_features")
	if err != nil {
		t.Fatal(err)
	}
	idx := make([]int, len(v.Features))
	for i := range idx {
		idx[i] = i
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.GetEach(v, []string{"u1", "u1", "u1"}, idx, t0, []int64{-5, 0, -3 * dayMS})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("GetEach as of a negative time did not return")
	}
	rows, err := s.GetEach(v, []string{"u1"}, idx, t0, []int64{-5})
	if err != nil {
		t.Fatal(err)
	}
	for j, f := range v.Features {
		if f.Window > 0 && f.Kind == KindInt && rows[0].Values[j].Int != 0 {
			t.Errorf("%s as of -5 = %d, want 0", f.Name, rows[0].Values[j].Int)
		}
	}
}
