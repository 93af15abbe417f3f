package featurestore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// derivedEv is an event with a derived id (as updater.Normalize makes
// them: a hash of the content, time included).
func derivedEv(user, item string, b Behavior, ts int64) Event {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%d\x00%d", user, item, b, ts))
	return Event{ID: DerivedIDPrefix + hex.EncodeToString(sum[:16]), UserID: user, ItemID: item, CategoryID: "c", Behavior: b, TS: ts, Derived: true}
}

// windowStore is a store fed like the embedded log: derived ids kept for
// the lateness (1h) plus an hour.
func windowStore(t testing.TB, fs vfs.FS) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: fs, Logger: quietLogger(), CacheBytes: 8 << 20, Clock: "event", DedupWindow: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// A derived id is a duplicate in the same batch, in a later one, after a
// reopen (the filters are rebuilt from the keys), and whether its hour's
// filter still exists or not (older hours are asked of Pebble).
func TestDedupDerived(t *testing.T) {
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Logger: quietLogger(), CacheBytes: 8 << 20, Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	a := derivedEv("u", "i", BehaviorView, t0)
	b := derivedEv("u", "j", BehaviorView, t0+1)
	if res := mustApply(t, s, 3, entries(0, a, b, a)); res != (ApplyResult{Applied: 2, Duplicates: 1}) {
		t.Errorf("first batch = %+v, want 2 applied, 1 duplicate", res)
	}
	if n := countKeys(t, s, prefixDerived); n != 2 {
		t.Errorf("%d derived keys, want 2", n)
	}
	if n := countKeys(t, s, prefixDedup); n != 0 {
		t.Errorf("%d client id keys, want 0", n)
	}
	// A client id equal to a derived one is another id (it may have any time).
	c := ev(a.ID, "u", "k", "c", BehaviorView, t0+2)
	if res := mustApply(t, s, 6, entries(3, b, c, a)); res != (ApplyResult{Applied: 1, Duplicates: 2}) {
		t.Errorf("second batch = %+v, want 1 applied, 2 duplicates", res)
	}
	// Ten hours later a's hour has no filter (newest − 1h − 1h is past it);
	// with the default window (the horizon) its key is still there.
	d := derivedEv("u", "l", BehaviorView, t0+10*hour)
	mustApply(t, s, 7, entries(6, d))
	if _, ok := s.dd.hours[hourOf(t0)]; ok {
		t.Errorf("hour of t0 still has a filter at t0+10h")
	}
	if res := mustApply(t, s, 8, entries(7, a)); res != (ApplyResult{Duplicates: 1}) {
		t.Errorf("resend of a 10h late = %+v, want a duplicate (looked up in Pebble)", res)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, fs, "db")
	if res := mustApply(t, s, 10, entries(8, d, b)); res != (ApplyResult{Duplicates: 2}) {
		t.Errorf("after reopen = %+v, want 2 duplicates", res)
	}
	if st := s.DedupStats(); st.Hours != 1 || st.DerivedIDs != 1 || st.ClientIDs != 1 {
		t.Errorf("DedupStats after reopen = %+v, want 1 hour, 1 derived id (d), 1 client id", st)
	}
}

// Under a steady stream the dedup state of derived ids levels off: the
// filters hold about the lateness plus one to two hours of ids and the
// keys on disk the DedupWindow, however many days go by; resends within
// the lateness stay duplicates throughout.
func TestDedupBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("applies three days of events")
	}
	s := windowStore(t, vfs.NewMem())
	const (
		perHour = 120
		step    = hour / perHour
		days    = 3
		batch   = 40
	)
	type sample struct {
		i    int64 // events so far
		st   DedupStats
		keys int
	}
	var samples []sample
	var ents []Entry
	var off uint64
	dups := 0
	for i := range int64(days * 24 * perHour) {
		ts := t0 + i*step
		ents = append(ents, Entry{Offset: off, Event: derivedEv(fmt.Sprint("u", i%50), fmt.Sprint("i", i), BehaviorView, ts)})
		off++
		if i%perHour == 7 && i > perHour {
			// A resend from 50 minutes ago: within the lateness.
			old := i - perHour*5/6
			ents = append(ents, Entry{Offset: off, Event: derivedEv(fmt.Sprint("u", old%50), fmt.Sprint("i", old), BehaviorView, t0+old*step)})
			off++
			dups++
		}
		if len(ents) >= batch {
			mustApply(t, s, off, ents)
			ents = ents[:0]
			samples = append(samples, sample{i, s.DedupStats(), countKeys(t, s, prefixDerived)})
		}
	}
	mustApply(t, s, off, ents)
	if st := s.Stats(); st.Duplicates != int64(dups) || st.Events != days*24*perHour {
		t.Errorf("Stats = %+v, want %d events, %d duplicates", st, days*24*perHour, dups)
	}
	// From the fourth hour on: at most four hours of filters (the hours
	// from newest − 2h to the newest), and at most the window plus the
	// newest hour and a batch of keys.
	var day1, last []sample
	for _, sm := range samples {
		if sm.i < 3*perHour {
			continue
		}
		if sm.st.Hours > 4 || sm.st.DerivedIDs > 4*perHour || sm.keys > 3*perHour+batch {
			t.Fatalf("after %d events: %+v, %d derived keys; want ≤ 4 hours and %d ids of filters, ≤ %d keys", sm.i, sm.st, sm.keys, 4*perHour, 3*perHour+batch)
		}
		switch sm.i / (24 * perHour) {
		case 0:
			day1 = append(day1, sm)
		case days - 1:
			last = append(last, sm)
		}
	}
	// The most held in day 1 (from the fourth hour) and in the last day:
	// no growth beyond where a batch ends relative to an hour's start (2
	// days of ids would be 5,760 more).
	peak := func(ss []sample) (p sample) {
		for _, sm := range ss {
			p.st.DerivedIDs, p.st.DerivedBytes = max(p.st.DerivedIDs, sm.st.DerivedIDs), max(p.st.DerivedBytes, sm.st.DerivedBytes)
			p.keys = max(p.keys, sm.keys)
		}
		return p
	}
	first, end := peak(day1), peak(last)
	if end.st.DerivedIDs > first.st.DerivedIDs+batch || end.st.DerivedBytes > first.st.DerivedBytes || end.keys > first.keys+batch {
		t.Errorf("peak in day 1: %+v, %d keys; in day %d: %+v, %d keys; want no growth", first.st, first.keys, days, end.st, end.keys)
	}
	t.Logf("peak in the last day: %d derived ids in filters of %d bytes, %d derived keys on disk", end.st.DerivedIDs, end.st.DerivedBytes, end.keys)
}

// A derived id older than the DedupWindow behind the newest event applied
// before it (which the watermark should have rejected) is applied as new,
// whatever the batch boundaries: the same sequence in batches of 1, 2 and
// all at once gives the same counts.
func TestDedupBeyondWindow(t *testing.T) {
	a := derivedEv("u", "i", BehaviorView, t0)
	later := derivedEv("u", "j", BehaviorView, t0+3*hour)
	seq := []Event{a, later, a, a, derivedEv("u", "k", BehaviorView, t0+3*hour+1), a}
	var want Stats
	for _, size := range []int{1, 2, len(seq)} {
		s := windowStore(t, vfs.NewMem())
		all := entries(0, seq...)
		for i := 0; i < len(all); i += size {
			j := min(i+size, len(all))
			mustApply(t, s, uint64(j), all[i:j])
		}
		st := s.Stats()
		if st.Events != 6 || st.Duplicates != 0 {
			t.Errorf("batches of %d: %+v, want 6 applied (a three times more, past the window), 0 duplicates", size, st)
		}
		if size == 1 {
			want = st
		} else if st != want {
			t.Errorf("batches of %d: %+v, batches of 1: %+v", size, st, want)
		}
		if d := s.DedupStats(); d.Beyond != 3 {
			t.Errorf("batches of %d: Beyond = %d, want 3", size, d.Beyond)
		}
	}
}

// Resends with derived ids in any batch split and across a reopen give the
// same counts.
func TestDedupDerivedBatches(t *testing.T) {
	var seq []Event
	for i := range int64(200) {
		seq = append(seq, derivedEv(fmt.Sprint("u", i%7), fmt.Sprint("i", i%13), BehaviorView, t0+i*hour/20))
		if i%5 == 0 && i > 10 {
			j := i - 1 - i%11 // within the hour before
			seq = append(seq, derivedEv(fmt.Sprint("u", j%7), fmt.Sprint("i", j%13), BehaviorView, t0+j*hour/20))
		}
	}
	var want Stats
	for _, size := range []int{1, 3, 17, len(seq)} {
		fs := vfs.NewMem()
		s := windowStore(t, fs)
		all := entries(0, seq...)
		for i := 0; i < len(all); i += size {
			j := min(i+size, len(all))
			mustApply(t, s, uint64(j), all[i:j])
			if i/size == 5 {
				// Reopen in the middle.
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s = windowStore(t, fs)
			}
		}
		st := s.Stats()
		if size == 1 {
			want = st
			if st.Duplicates == 0 || st.Events+st.Duplicates != int64(len(seq)) {
				t.Fatalf("batches of 1: %+v", st)
			}
		} else if st != want {
			t.Errorf("batches of %d: %+v, batches of 1: %+v", size, st, want)
		}
	}
}

// A data dir from before the w keys has derived ids under e keys: they
// stay duplicates until the horizon removes them.
func TestDedupLegacyKeys(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs, "db")
	a := derivedEv("u", "i", BehaviorView, t0)
	if err := s.db.Set(dedupKey(a.TS, a.ID), make([]byte, 8), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, fs, "db")
	if !s.dd.legacy {
		t.Fatal("legacy not noticed")
	}
	if res := mustApply(t, s, 2, entries(0, a, derivedEv("u", "j", BehaviorView, t0))); res != (ApplyResult{Applied: 1, Duplicates: 1}) {
		t.Errorf("apply = %+v, want the legacy id a duplicate", res)
	}
}

// BenchmarkDedupDerived runs the dedup decision of derived ids alone (no
// Pebble writes) over twelve hours of event time at 100 k events per hour
// per iteration, and reports the bytes of filter per id held in memory at
// the end and the ids held (the lateness of 1h plus one to two hours).
func BenchmarkDedupDerived(b *testing.B) {
	const perHour = 100_000
	b.ReportAllocs()
	var st DedupStats
	for range b.N {
		s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event", DedupWindow: 2 * time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		ids := newBatchIDs()
		var maxTS int64
		for i := range int64(12 * perHour) {
			e := derivedEv("u", strconv.FormatInt(i, 10), BehaviorView, t0+i*hour/perHour)
			if _, _, _, err := s.dedupEvent(&e, uint64(i), maxTS, ids); err != nil {
				b.Fatal(err)
			}
			maxTS = max(maxTS, e.TS)
			if i%4096 == 4095 {
				s.commitDedup(maxTS)
				ids = newBatchIDs()
			}
		}
		st = s.DedupStats()
		_ = s.Close()
	}
	b.ReportMetric(float64(st.DerivedBytes)/float64(st.DerivedIDs), "filter-B/id")
	b.ReportMetric(float64(st.DerivedIDs), "ids-held")
	b.ReportMetric(float64(st.Hours), "hours-held")
}
