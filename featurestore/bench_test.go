package featurestore

import (
	"context"
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

// benchStore opens a store without models (BenchmarkApply in
// featurestore/models measures applying with them).
func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// applyBenchEvents applies batches batches of size new events (see
// benchEvents) to the fresh store s.
func applyBenchEvents(tb testing.TB, s *Store, rng *rand.Rand, batches, size int) {
	tb.Helper()
	batch := make([]Entry, size)
	var next uint64
	for range batches {
		benchEvents(rng, batch, &next)
		if _, err := s.Apply(next, batch); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkGet500 reads every feature of 500 random users.
func BenchmarkGet500(b *testing.B) {
	benchGet500(b, benchStore(b), false)
}

// BenchmarkGet500Warm is BenchmarkGet500 once every user's window state
// is materialized: the steady state of online reads, where the first read
// of each user (the build) is behind.
func BenchmarkGet500Warm(b *testing.B) {
	s := benchStore(b)
	rng := rand.New(rand.NewPCG(3, 4))
	applyBenchEvents(b, s, rng, 50, benchBatch)
	idx, err := UserView.Resolve(nil)
	if err != nil {
		b.Fatal(err)
	}
	all := make([]string, benchUsers)
	for i := range all {
		all[i] = "u" + strconv.Itoa(i)
	}
	for i := 0; i < len(all); i += 500 {
		if _, err := s.Get(UserView, all[i:i+500], idx, evNow(s)); err != nil {
			b.Fatal(err)
		}
	}
	if st := s.WindowStateStats(); st.Entries < benchUsers*9/10 {
		b.Fatalf("%d users' window state materialized, want nearly all %d", st.Entries, benchUsers)
	}
	ids := make([]string, 500)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range ids {
			ids[i] = all[rng.IntN(benchUsers)]
		}
		b.StartTimer()
		rows, err := s.Get(UserView, ids, idx, evNow(s))
		if err != nil || len(rows) != len(ids) {
			b.Fatal(len(rows), err)
		}
	}
}

// BenchmarkGet500Disk is BenchmarkGet500 on files: the rows are read from
// flushed tables through the block cache rather than from memtables.
func BenchmarkGet500Disk(b *testing.B) {
	s, err := Open(b.TempDir(), Options{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	benchGet500(b, s, true)
}

// benchGet500 fills s with ~200k events (nearly every user has a record),
// flushed to tables if flush, and reads every feature of 500 random users.
func benchGet500(b *testing.B, s *Store, flush bool) {
	rng := rand.New(rand.NewPCG(3, 4))
	applyBenchEvents(b, s, rng, 50, benchBatch)
	if flush {
		if err := s.Flush(); err != nil {
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

// TestGetEachInParallel reads a spine big enough for several goroutines
// (see getWorkers) and checks a sample of its rows against Get.
func TestGetEachInParallel(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	applyBenchEvents(t, s, rng, 10, benchBatch)
	idx, err := UserView.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 3 * (16 << 10)
	ids, asOf := make([]string, n), make([]int64, n)
	for i := range ids {
		ids[i], asOf[i] = "u"+strconv.Itoa(rng.IntN(benchUsers)), t0+rng.Int64N(500_000)
	}
	now := s.Now()
	rows, err := s.GetEach(UserView, ids, idx, now, asOf)
	if err != nil {
		t.Fatal(err)
	}
	for range 500 {
		i := rng.IntN(n)
		want, err := s.Get(UserView, ids[i:i+1], idx, ReadTime{Now: now, AsOf: asOf[i]})
		if err != nil {
			t.Fatal(err)
		}
		if rows[i].ID != ids[i] || rows[i].Found != want[0].Found {
			t.Fatalf("row %d = %s found %v, want %s found %v", i, rows[i].ID, rows[i].Found, ids[i], want[0].Found)
		}
		for j := range idx {
			if g, w := rows[i].Values[j], want[0].Values[j]; !valueEqual(g, w) || g.Float != w.Float && g.Float == g.Float {
				t.Fatalf("row %d %s %s = %+v, want %+v", i, ids[i], UserView.Features[idx[j]].Name, g, w)
			}
		}
	}
}

// BenchmarkScanUsers scans every feature of 200 K users with one or two
// events each over 20 hours (the Flight bench's data, a fifth of it),
// compacted, as DoGet of user_features does. It reports rows per second.
func BenchmarkScanUsers(b *testing.B) {
	const users = 200_000
	s, err := Open("db", Options{FS: vfs.NewMem(), Clock: "event", Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	var batch []Entry
	var next uint64
	add := func(ev Event) {
		ev.ID = "e" + strconv.FormatUint(next, 10)
		batch = append(batch, Entry{Offset: next, Event: ev})
		next++
		if len(batch) == benchBatch {
			if _, err := s.Apply(next, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	for i := range users {
		ts := t0 + int64(i*7919)%(20*3_600_000)
		u := "u" + strconv.Itoa(1_000_000+i)
		add(Event{UserID: u, ItemID: "i" + strconv.Itoa(i%50_000), CategoryID: "c" + strconv.Itoa(i%300), Behavior: BehaviorView, TS: ts})
		if i%3 == 0 {
			add(Event{UserID: u, ItemID: "i" + strconv.Itoa(i*13%50_000), CategoryID: "c" + strconv.Itoa(i%300), Behavior: BehaviorCart, TS: ts + 60_000})
		}
	}
	if _, err := s.Apply(next, batch); err != nil {
		b.Fatal(err)
	}
	if err := s.Compact(context.Background()); err != nil {
		b.Fatal(err)
	}
	v, err := s.Definitions().View("user_features")
	if err != nil {
		b.Fatal(err)
	}
	idx, err := v.Resolve(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var rows int
	for range b.N {
		rows = 0
		if err := s.Scan(v, "", "", idx, s.At(0), func(*Row) error { rows++; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	if rows != users {
		b.Fatalf("scanned %d rows, want %d", rows, users)
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
