package featurestore

import (
	"math"
	"testing"
	"time"
)

// extremeTimes are read times at and beyond the edges of what tiles can
// hold: before 1970, around the last day a tile key can name (day 2^32-1,
// where a uint32 day loop once wrapped around), around readBound, and the
// ends of int64.
var extremeTimes = []int64{
	math.MinInt64, math.MinInt64 + 1, -readBound - 1, -readBound, -3 * dayMS, -5, -1, 0, 1,
	dayMS - 1, maxIntMillisTest, tilesEnd - 1, tilesEnd, tilesEnd + 5, int64(1<<32)*dayMS + 5,
	readBound, readBound + 1, math.MaxInt64 - coarseTile, math.MaxInt64 - 1, math.MaxInt64,
}

// maxIntMillisTest is 9999-12-31T23:59:59.999Z.
const maxIntMillisTest = 253402300799999

// TestReadsAsOfAnyTime reads every feature of every view, and the top
// items, as of every extreme int64 time: each read returns at once, with
// nothing in a window (no event is near those times) and the lifetime
// values of the entity where it is current.
func TestReadsAsOfAnyTime(t *testing.T) {
	s, _ := newMemStore(t)
	mustApply(t, s, 2, entries(0,
		ev("e1", "u1", "i1", "c1", BehaviorView, t0),
		ev("e2", "u1", "i1", "c1", BehaviorPurchase, t0+1)))
	defs := s.Definitions()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, asOf := range append(extremeTimes, t0+1) {
			for _, name := range []string{"user_features", "item_features"} {
				v, err := defs.View(name)
				if err != nil {
					t.Error(err)
					return
				}
				idx, _ := v.Resolve(nil)
				id := map[string]string{"user_features": "u1", "item_features": "i1"}[name]
				rows, err := s.GetEach(v, []string{id}, idx, t0+1, []int64{asOf})
				if err != nil {
					t.Errorf("GetEach %s as of %d: %v", name, asOf, err)
					continue
				}
				checkRowAsOf(t, v, rows[0], asOf)
				// Scan and Get read through the same reader at one time.
				got, err := s.Get(v, []string{rows[0].ID}, idx, ReadTime{Now: t0 + 1, AsOf: asOf})
				if err != nil {
					t.Errorf("Get %s as of %d: %v", name, asOf, err)
					continue
				}
				checkRowAsOf(t, v, got[0], asOf)
			}
			cv, err := defs.View("category_features")
			if err != nil {
				t.Error(err)
				return
			}
			idx, _ := cv.Resolve(nil)
			rows, err := s.Get(cv, []string{"c1"}, idx, ReadTime{Now: t0 + 1, AsOf: asOf})
			if err != nil {
				t.Errorf("Get category_features as of %d: %v", asOf, err)
				continue
			}
			for j, val := range rows[0].Values {
				if asOf != t0+1 && len(val.List) != 0 {
					t.Errorf("category_features.%s as of %d = %v, want nothing", cv.Features[idx[j]].Name, asOf, val.List)
				}
			}
			for _, w := range []int64{math.MinInt64, 0, coarseTile, dayMS, 7 * dayMS, math.MaxInt64} {
				top, err := s.TopItems("", asOf, w, 10, true, BehaviorView)
				if err != nil {
					t.Errorf("TopItems as of %d, window %d: %v", asOf, w, err)
					continue
				}
				if w <= 0 {
					continue // no window: only that it returns
				}
				if want := asOf == t0+1 || (w == math.MaxInt64 && asOf > t0); (len(top) == 1) != want {
					t.Errorf("TopItems as of %d, window %d = %v, want i1: %v", asOf, w, top, want)
				}
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reads as of extreme times did not return within 5 s")
	}
}

// checkRowAsOf checks the values of row (u1 or i1: a view at t0 and a
// purchase at t0+1) read as of asOf.
func checkRowAsOf(t *testing.T, v *View, row Row, asOf int64) {
	t.Helper()
	if !row.Found {
		t.Errorf("%s %s as of %d: not found", v.Name, row.ID, asOf)
		return
	}
	for j, f := range v.Features {
		val := row.Values[j]
		switch {
		case asOf == t0+1:
			if want := int64(1); f.Agg == AggCount && (f.Behavior == BehaviorView || f.Behavior == BehaviorPurchase) && val.Int != want {
				t.Errorf("%s.%s as of t0+1 = %d, want %d", v.Name, f.Name, val.Int, want)
			}
		case f.Window > 0:
			// Expired when the window is older than the TTL allows (1970),
			// present with nothing counted otherwise.
			if val.Status != StatusExpired && (val.Status != StatusPresent || val.Int != 0 || (f.Agg != AggRate && f.Agg != AggTrend && val.Float != 0) || val.EventTS != 0) {
				t.Errorf("%s.%s as of %d = %+v, want expired, or present and nothing counted", v.Name, f.Name, asOf, val)
			}
			if (val.Status == StatusExpired) != (asOf < t0) {
				t.Errorf("%s.%s as of %d is %s", v.Name, f.Name, asOf, val.Status)
			}
		case asOf < t0+1:
			if f.Versioned() || val.Status != StatusNotVersioned {
				t.Errorf("%s.%s as of %d = %+v, want not_versioned", v.Name, f.Name, asOf, val)
			}
		case f.Agg == AggCount && (f.Behavior == BehaviorView || f.Behavior == BehaviorPurchase):
			if val.Status != StatusPresent || val.Int != 1 {
				t.Errorf("%s.%s as of %d = %+v, want 1", v.Name, f.Name, asOf, val)
			}
		case f.Agg == AggSecondsSinceLastEvent:
			if want := (float64(asOf) - float64(t0+1)) / 1000; val.Float != want || val.Float < 0 {
				t.Errorf("%s.%s as of %d = %v, want %v", v.Name, f.Name, asOf, val.Float, want)
			}
		}
	}
}
