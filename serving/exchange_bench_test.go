package serving

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
)

// discardStream is a Flight data stream that drops what is sent.
type discardStream struct{}

func (discardStream) Send(*flight.FlightData) error { return nil }

// BenchmarkPointInTime joins a 1 M-row spine (random users of 100 K, at
// random times over the 3 days of 1 M events) with 3 window features, as
// DoExchange does once the spine is read back: in slices, each encoded for
// the wire. It reports spine rows per second. (Run it with -benchtime 3x:
// filling the store takes a minute.)
func BenchmarkPointInTime(b *testing.B) {
	const (
		users  = 100_000
		events = 1 << 20
		rows   = 1_000_000
		t0     = int64(1_767_225_600_000)
		step   = int64(250) // ms between events: 3 days in all
	)
	rng := rand.New(rand.NewPCG(1, 2))
	st := benchStore(b, events, func(next uint64) featurestore.Event {
		beh := featurestore.BehaviorView
		if rng.IntN(10) == 0 {
			beh = featurestore.BehaviorCart
		}
		item := rng.IntN(50_000)
		return featurestore.Event{
			ID: "e" + strconv.FormatUint(next, 10), UserID: "u" + strconv.Itoa(rng.IntN(users)),
			ItemID: "i" + strconv.Itoa(item), CategoryID: "c" + strconv.Itoa(item%300), Behavior: beh, TS: t0 + int64(next)*step,
		}
	})
	ids := make([]string, rows)
	ts := make([]int64, rows)
	for r := range rows {
		ids[r], ts[r] = "u"+strconv.Itoa(rng.IntN(users)), t0+rng.Int64N(events*step+3_600_000)
	}
	benchJoin(b, st, ids, ts)
}

// BenchmarkPointInTimeDistinct is the join of make bench-flight: 1 M
// users of one or two events each, a spine of one row per user, all at one
// time, in id order and shuffled.
func BenchmarkPointInTimeDistinct(b *testing.B) {
	const (
		users = 1_000_000
		t0    = int64(1_767_225_600_000)
	)
	var user int
	var cart bool // the next event is user's cart
	st := benchStore(b, users+(users+2)/3, func(next uint64) featurestore.Event {
		// As tests/bench_flight.py writes them: a view per user, a cart
		// a minute later for every third.
		u := user
		e := featurestore.Event{ID: "e" + strconv.FormatUint(next, 10), UserID: fmt.Sprintf("u%07d", u), ItemID: "i" + strconv.Itoa(u%50_000),
			CategoryID: "c" + strconv.Itoa(u%300), Behavior: featurestore.BehaviorView, TS: t0 + int64(u*7919)%(20*3_600_000)}
		if cart {
			e.Behavior, e.TS, e.ItemID = featurestore.BehaviorCart, e.TS+60_000, "i"+strconv.Itoa(u*13%50_000)
		}
		if cart = u%3 == 0 && !cart; !cart {
			user++
		}
		return e
	})
	ids := make([]string, users)
	ts := make([]int64, users)
	for r := range users {
		ids[r], ts[r] = fmt.Sprintf("u%07d", r), t0+20*3_600_000
	}
	b.Run("in order", func(b *testing.B) { benchJoin(b, st, ids, ts) })
	// The same rows shuffled (as bench-flight's second spine): joined by
	// partitions.
	rand.New(rand.NewPCG(7, 8)).Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	b.Run("shuffled", func(b *testing.B) { benchJoin(b, st, ids, ts) })
}

// benchStore is a compacted store of n events made by ev, applied in
// batches of 4096.
func benchStore(b *testing.B, n uint64, ev func(next uint64) featurestore.Event) *featurestore.Store {
	st, err := featurestore.Open("db", featurestore.Options{FS: vfs.NewMem(), Clock: "event", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	batch := make([]featurestore.Entry, 0, 4096)
	for next := uint64(0); next < n; {
		batch = batch[:0]
		for ; len(batch) < cap(batch) && next < n; next++ {
			batch = append(batch, featurestore.Entry{Offset: next, Event: ev(next)})
		}
		if _, err := st.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	// Compacted, as a store is once replayed or long served: reads see
	// one value per tile, not a stack of merge operands.
	if err := st.Compact(context.Background()); err != nil {
		b.Fatal(err)
	}
	return st
}

// benchJoin joins the spine (ids, ts) with 3 window features of
// user_features, as DoExchange does once the spine is spilled (in batches
// of 64 K rows, as bench-flight sends it): read back and joined, in
// slices or by partitions, each batch encoded for the wire. It reports
// spine rows per second.
func benchJoin(b *testing.B, st *featurestore.Store, ids []string, ts []int64) {
	mem := memory.NewGoAllocator()
	f := NewFlightServer(st, nil, mem).WithSpill(b.TempDir(), 0, 0)
	sch := arrow.NewSchema([]arrow.Field{{Name: "user_id", Type: arrow.BinaryTypes.String}, {Name: "ts", Type: arrow.PrimitiveTypes.Int64}}, nil)
	sp, err := f.newSpill(sch)
	if err != nil {
		b.Fatal(err)
	}
	defer sp.close()
	views, out, err := f.planJoin(sch, exchangeCmd{Op: "point_in_time", Views: []string{"user_features"}, Features: []string{"view_count_1h", "cart_count_24h", "view_count_7d"}})
	if err != nil {
		b.Fatal(err)
	}
	follow := []*spineIDs{newSpineIDs()}
	for lo := 0; lo < len(ids); lo += 1 << 16 {
		hi := min(lo+1<<16, len(ids))
		rb := array.NewRecordBuilder(mem, sch)
		rb.Field(0).(*array.StringBuilder).AppendValues(ids[lo:hi], nil)
		rb.Field(1).(*array.Int64Builder).AppendValues(ts[lo:hi], nil)
		rec := rb.NewRecord()
		rb.Release()
		err := errors.Join(followIDs(rec, views, follow, int64(lo)), sp.write(rec))
		rec.Release()
		if err != nil {
			b.Fatal(err)
		}
	}
	w := flight.NewRecordWriter(discardStream{}, ipc.WithSchema(out), ipc.WithAllocator(mem))
	defer w.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := f.answerJoin(w, out, sp, int64(len(ids)), 1, views, follow, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(ids))*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
