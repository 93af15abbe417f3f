package serving

import (
	"context"
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
	st, err := featurestore.Open("db", featurestore.Options{FS: vfs.NewMem(), Clock: "event", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	rng := rand.New(rand.NewPCG(1, 2))
	batch := make([]featurestore.Entry, 4096)
	var next uint64
	for next < events {
		for i := range batch {
			beh := featurestore.BehaviorView
			if rng.IntN(10) == 0 {
				beh = featurestore.BehaviorCart
			}
			item := rng.IntN(50_000)
			batch[i] = featurestore.Entry{Offset: next, Event: featurestore.Event{
				ID: "e" + strconv.FormatUint(next, 10), UserID: "u" + strconv.Itoa(rng.IntN(users)),
				ItemID: "i" + strconv.Itoa(item), CategoryID: "c" + strconv.Itoa(item%300), Behavior: beh, TS: t0 + int64(next)*step,
			}}
			next++
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
	mem := memory.NewGoAllocator()
	f := NewFlightServer(st, nil, mem)
	sch := arrow.NewSchema([]arrow.Field{{Name: "user_id", Type: arrow.BinaryTypes.String}, {Name: "ts", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rb := array.NewRecordBuilder(mem, sch)
	for range rows {
		rb.Field(0).(*array.StringBuilder).Append("u" + strconv.Itoa(rng.IntN(users)))
		rb.Field(1).(*array.Int64Builder).Append(t0 + rng.Int64N(events*step+3_600_000))
	}
	spine := rb.NewRecord()
	rb.Release()
	defer spine.Release()
	views, out, err := f.planJoin(sch, exchangeCmd{Op: "point_in_time", Views: []string{"user_features"}, Features: []string{"view_count_1h", "cart_count_24h", "view_count_7d"}})
	if err != nil {
		b.Fatal(err)
	}
	w := flight.NewRecordWriter(discardStream{}, ipc.WithSchema(out), ipc.WithAllocator(mem))
	defer w.Close()
	sliceRows := f.joinRows(3)
	now := st.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for lo := int64(0); lo < rows; lo += sliceRows {
			part := spine.NewSlice(lo, min(lo+sliceRows, rows))
			err := f.joinBatch(w, out, part, lo, 1, views, now)
			part.Release()
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
