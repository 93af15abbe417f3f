package serving

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// startFlightServer is startFlight with the server's settings set by
// configure before it serves.
func startFlightServer(t *testing.T, e *env, mem memory.Allocator, configure func(*FlightServer)) flight.Client {
	t.Helper()
	fsrv := NewFlightServer(e.store, e.models, mem)
	configure(fsrv)
	gs := fsrv.GRPCServer()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	// Joined batches may pass gRPC-Go's default 4 MiB (pyarrow's client
	// has no such limit).
	c, err := flight.NewClientWithMiddleware(l.Addr().String(), nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// exchangeRecords runs a point-in-time join of the spine recs (one schema)
// with cmd and returns the joined batches (to release) or the server's
// error. Write errors are ignored: a server that refuses a spine stops
// reading it, and its status says why.
func exchangeRecords(t *testing.T, c flight.Client, mem memory.Allocator, cmd string, recs []arrow.Record, opts ...ipc.Option) ([]arrow.Record, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.DoExchange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := flight.NewRecordWriter(stream, append([]ipc.Option{ipc.WithSchema(recs[0].Schema()), ipc.WithAllocator(mem)}, opts...)...)
	w.SetFlightDescriptor(&flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(cmd)})
	for _, r := range recs {
		if w.Write(r) != nil {
			break
		}
	}
	_ = w.Close()
	_ = stream.CloseSend()
	rd, err := flight.NewRecordReader(stream, ipc.WithAllocator(mem))
	if err != nil {
		return nil, err
	}
	defer rd.Release()
	var out []arrow.Record
	for rd.Next() {
		r := rd.Record()
		r.Retain()
		out = append(out, r)
	}
	if err := rd.Err(); err != nil {
		for _, r := range out {
			r.Release()
		}
		return nil, err
	}
	return out, nil
}

// spineOf is a spine of user ids and times of type tsType.
func spineOf(mem memory.Allocator, ids []string, tsType arrow.DataType, ts []int64) arrow.Record {
	sch := arrow.NewSchema([]arrow.Field{{Name: "user_id", Type: arrow.BinaryTypes.String}, {Name: "ts", Type: tsType}}, nil)
	b := array.NewRecordBuilder(mem, sch)
	defer b.Release()
	b.Field(0).(*array.StringBuilder).AppendValues(ids, nil)
	switch tb := b.Field(1).(type) {
	case *array.Int64Builder:
		tb.AppendValues(ts, nil)
	case *array.TimestampBuilder:
		for _, v := range ts {
			tb.Append(arrow.Timestamp(v))
		}
	}
	return b.NewRecord()
}

// Every int64 spine time answers at once, with values or nulls, or with
// INVALID_ARGUMENT naming spine.ts and the reason, whatever its type.
// (A timestamp at day 2^32-1 once looped without end in the tile scan,
// allocating an iterator per day, as did -5 before it.)
func TestDoExchangeAnyTS(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(2))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 100)
	const day = int64(24 * time.Hour / time.Millisecond)
	ms := &arrow.TimestampType{Unit: arrow.Millisecond}
	sec := &arrow.TimestampType{Unit: arrow.Second}
	ns := &arrow.TimestampType{Unit: arrow.Nanosecond, TimeZone: "UTC"}
	for _, tc := range []struct {
		typ  arrow.DataType
		ts   int64
		want string // "" for an answer with nothing counted; else a fragment of the error
	}{
		{arrow.PrimitiveTypes.Int64, math.MinInt64, "before 1970"},
		{arrow.PrimitiveTypes.Int64, -5, "before 1970"},
		{arrow.PrimitiveTypes.Int64, 0, "Unix seconds?"},
		{arrow.PrimitiveTypes.Int64, 1, "Unix seconds?"},
		{arrow.PrimitiveTypes.Int64, maxIntMillis, ""},
		{arrow.PrimitiveTypes.Int64, maxIntMillis + 1, "microseconds or nanoseconds?"},
		{arrow.PrimitiveTypes.Int64, math.MaxInt64, "microseconds or nanoseconds?"},
		{ms, math.MinInt64, "before 1970"},
		{ms, -5, "before 1970"},
		{ms, 0, ""},
		{ms, 1, ""},
		{ms, maxIntMillis, ""},
		{ms, (1<<32-1)*day + 5, ""}, // in day 2^32-1, the last a tile key can name
		{ms, (1 << 32) * day, ""},
		{ms, 1 << 62, ""},
		{ms, math.MaxInt64 - 1, ""},
		{ms, math.MaxInt64, ""},
		{sec, math.MaxInt64, "out of range"},
		{sec, math.MaxInt64 / 1000, ""},
		{sec, math.MinInt64 / 1000, "before 1970"},
		{ns, math.MinInt64, "before 1970"},
		{ns, math.MaxInt64, ""},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.typ, tc.ts), func(t *testing.T) {
			spine := spineOf(mem, []string{"u00001"}, tc.typ, []int64{tc.ts})
			defer spine.Release()
			start := time.Now()
			out, err := exchangeRecords(t, c, mem, `{"op":"point_in_time","views":["user_features"],"features":["view_count_1h","view_count","seconds_since_last_event"]}`, []arrow.Record{spine})
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("answered in %v", d)
			}
			if tc.want != "" {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spine.ts: row 0") || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want INVALID_ARGUMENT naming spine.ts, row 0, %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, r := range out {
					r.Release()
				}
			}()
			if len(out) != 1 || out[0].NumRows() != 1 {
				t.Fatalf("joined = %v, want one row", out)
			}
			// Nothing in the window: 1970 and the far future are far from
			// the views; the lifetime count is the entity's where it is
			// current, null (not versioned) before its last event.
			rec := out[0]
			// (A window of 1970 is past the views' TTL: expired, null.)
			if got := rec.Column(2).(*array.Int64); got.IsValid(0) == (tc.ts < baseTS) || (got.IsValid(0) && got.Value(0) != 0) {
				t.Errorf("view_count_1h = %v, want 0, or null in 1970", got)
			}
			life := rec.Column(3).(*array.Int64)
			after := tc.ts > baseTS // in ms (or more) for every type here but s, whose values are all past it
			if after != life.IsValid(0) || (after && life.Value(0) != 1) {
				t.Errorf("view_count = %v, want 1 after its last event, else null", life)
			}
		})
	}
	mem.AssertSize(t, 0)
}

// as_of, an int64 in Unix milliseconds wherever a read takes one
// (features:get over gRPC and REST, popular items, Flight tickets), is
// checked by one rule: 0 reads now, negative times and times that can
// only be in another unit are INVALID_ARGUMENT naming as_of; the rest are
// answered at once.
func TestAsOfAnyTime(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(2))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 100)
	ctx := context.Background()
	for _, tc := range []struct {
		asOf int64
		want string
	}{
		{math.MinInt64, "is negative"},
		{-5, "is negative"},
		{0, ""},
		{1, "Unix seconds?"},
		{1_700_000_000, "Unix seconds?"},
		{baseTS + 1, ""},
		{maxIntMillis, ""},
		{maxIntMillis + 1, "microseconds or nanoseconds?"},
		{math.MaxInt64, "microseconds or nanoseconds?"},
	} {
		t.Run(fmt.Sprint(tc.asOf), func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if tc.want == "" {
					if err != nil {
						t.Errorf("%s: %v", what, err)
					}
					return
				}
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "as_of: ") || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: err = %v, want INVALID_ARGUMENT naming as_of, %q", what, err, tc.want)
				}
			}
			start := time.Now()
			_, err := e.srv.GetFeatures(ctx, &recsysv1.GetFeaturesRequest{View: "user_features", Ids: []string{"u00001"}, AsOf: tc.asOf})
			check("GetFeatures", err)
			_, err = e.srv.GetFeatures(ctx, &recsysv1.GetFeaturesRequest{View: "category_features", Ids: []string{"c1"}, AsOf: tc.asOf})
			check("GetFeatures category_features", err)
			_, err = e.srv.PopularItems(ctx, &recsysv1.PopularItemsRequest{Window: "168h", AsOf: tc.asOf})
			check("PopularItems", err)
			cmd := fmt.Sprintf(`{"view":"user_features","as_of":%d}`, tc.asOf)
			_, err = c.GetFlightInfo(ctx, &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(cmd)})
			check("GetFlightInfo", err)
			stream, err := c.DoGet(ctx, &flight.Ticket{Ticket: []byte(cmd)})
			if err == nil {
				var rd *flight.Reader
				if rd, err = flight.NewRecordReader(stream, ipc.WithAllocator(mem)); err == nil {
					for rd.Next() {
					}
					err = rd.Err()
					rd.Release()
				}
			}
			check("DoGet", err)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("answered in %v", d)
			}
		})
	}
	mem.AssertSize(t, 0)
}

// A spine's memory is bounded whatever its shape: a batch whose buffers,
// dictionaries or decompressed body claim more than the budget is refused
// naming the spine, before the memory is taken; many tiny batches are
// spilled to disk, and answered, in order; a spine past its disk limit is
// RESOURCE_EXHAUSTED naming the limit; and the server keeps answering.
func TestDoExchangeSpineBudget(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(2))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	var fsrv *FlightServer
	spillDir := t.TempDir()
	c := startFlightServer(t, e, mem, func(f *FlightServer) {
		f.spineBytes, f.joinValues, fsrv = 4<<20, 3000, f
		f.WithSpill(spillDir, 1<<20, 0)
	})
	const cmd = `{"op":"point_in_time","views":["user_features"],"features":["view_count_1h"]}`
	refused := func(t *testing.T, out []arrow.Record, err error) {
		t.Helper()
		for _, r := range out {
			r.Release()
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spine: a batch needs more than 4 MiB") {
			t.Fatalf("err = %v, want INVALID_ARGUMENT: spine: a batch needs more than 4 MiB", err)
		}
	}
	noSpillLeft := func(t *testing.T) {
		t.Helper()
		if left, _ := os.ReadDir(spillDir); len(left) != 0 {
			t.Fatalf("%d files left in the spill dir", len(left))
		}
	}
	one := spineOf(mem, []string{"u00001"}, arrow.PrimitiveTypes.Int64, []int64{baseTS})
	t.Run("tiny batches", func(t *testing.T) {
		recs := make([]arrow.Record, 2_000) // 2,000 rows, but 2,000 batches: a few hundred KB spilled
		for i := range recs {
			recs[i] = one
		}
		out, err := exchangeRecords(t, c, mem, cmd, recs)
		if err != nil {
			t.Fatal(err)
		}
		rows := int64(0)
		for _, r := range out {
			rows += r.NumRows()
			r.Release()
		}
		if rows != int64(len(recs)) {
			t.Fatalf("%d rows back, want %d", rows, len(recs))
		}
		noSpillLeft(t)
	})
	t.Run("past the disk limit", func(t *testing.T) {
		recs := make([]arrow.Record, 10_000) // about 3 MB spilled, past 1 MiB
		for i := range recs {
			recs[i] = one
		}
		out, err := exchangeRecords(t, c, mem, cmd, recs)
		for _, r := range out {
			r.Release()
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "spine: more than 1 MiB spilled to disk") || !strings.Contains(err.Error(), "--flight.max-spill-bytes") {
			t.Fatalf("err = %v, want RESOURCE_EXHAUSTED: spine: more than 1 MiB spilled to disk ... --flight.max-spill-bytes", err)
		}
		noSpillLeft(t)
	})
	t.Run("compressed", func(t *testing.T) {
		// 1 M equal rows: 16 MB once decompressed, a few KB on the wire.
		n := 1 << 20
		ids, ts := make([]string, n), make([]int64, n)
		for i := range ids {
			ids[i], ts[i] = "u00001", baseTS
		}
		big := spineOf(mem, ids, arrow.PrimitiveTypes.Int64, ts)
		defer big.Release()
		out, err := exchangeRecords(t, c, mem, cmd, []arrow.Record{big}, ipc.WithZstd())
		refused(t, out, err)
	})
	t.Run("dictionary", func(t *testing.T) {
		// A dictionary of 8 MB of distinct ids behind a one-row spine.
		dt := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}
		sch := arrow.NewSchema([]arrow.Field{{Name: "user_id", Type: dt}, {Name: "ts", Type: arrow.PrimitiveTypes.Int64}}, nil)
		vb := array.NewStringBuilder(mem)
		for i := range 1 << 18 {
			vb.Append(fmt.Sprintf("user-with-a-long-id-%012d", i))
		}
		dict := vb.NewArray()
		vb.Release()
		defer dict.Release()
		ib := array.NewInt32Builder(mem)
		ib.Append(1)
		idx := ib.NewArray()
		ib.Release()
		defer idx.Release()
		col := array.NewDictionaryArray(dt, idx, dict)
		defer col.Release()
		tb := array.NewInt64Builder(mem)
		tb.Append(baseTS)
		tsa := tb.NewArray()
		tb.Release()
		defer tsa.Release()
		rec := array.NewRecord(sch, []arrow.Array{col, tsa}, 1)
		defer rec.Release()
		out, err := exchangeRecords(t, c, mem, cmd, []arrow.Record{rec})
		refused(t, out, err)
	})
	// Under the budget, a batch bigger than joinRows is joined in slices,
	// every row in order.
	t.Run("within", func(t *testing.T) {
		n := int(fsrv.joinRows(1))*2 + 3
		ids, ts := make([]string, n), make([]int64, n)
		for i := range ids {
			ids[i], ts[i] = fmt.Sprintf("u%05d", i%3), baseTS+int64(i%2)
		}
		spine := spineOf(mem, ids, arrow.PrimitiveTypes.Int64, ts)
		defer spine.Release()
		out, err := exchangeRecords(t, c, mem, cmd, []arrow.Record{spine})
		if err != nil {
			t.Fatal(err)
		}
		row := 0
		for _, r := range out {
			got := r.Column(2).(*array.Int64)
			for i := range int(r.NumRows()) {
				// u00000 viewed at baseTS, u00001 at baseTS+1, u00002 never.
				want := map[int]int64{0: 1, 1: int64(row % 2)}[row%3]
				if id := r.Column(0).(*array.String).Value(i); id != ids[row] {
					t.Fatalf("row %d is %s, want %s", row, id, ids[row])
				}
				if row%3 == 2 {
					if got.IsValid(i) {
						t.Fatalf("row %d (nobody) = %d, want null", row, got.Value(i))
					}
				} else if got.Value(i) != want {
					t.Fatalf("row %d = %d, want %d", row, got.Value(i), want)
				}
				row++
			}
			r.Release()
		}
		if row != n || len(out) != 3 {
			t.Fatalf("%d rows in %d batches, want %d in 3", row, len(out), n)
		}
	})
	one.Release()
	mem.AssertSize(t, 0)
}

// malformedStrings is a string array of two rows whose offsets descend
// (0, 10, 2): the IPC reader accepts it (the last offset is within the
// values), and reading row 1 panics.
func malformedStrings() arrow.Array {
	offs := memory.NewBufferBytes(arrow.Int32Traits.CastToBytes([]int32{0, 10, 2}))
	vals := memory.NewBufferBytes([]byte("u00001u000"))
	return array.NewStringData(array.NewData(arrow.BinaryTypes.String, 2, []*memory.Buffer{nil, offs, vals}, nil, 0, 0))
}

// Arrays that are well-framed but malformed (offsets out of order,
// dictionary indices past the dictionary), in ids or in DoPut, are
// INVALID_ARGUMENT: once, they took the server
// down (a panic in a handler), with only a read token.
func TestMalformedArraysAreInvalidArgument(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(2))
	mem := memory.NewGoAllocator() // the partly built values of a refused batch are left to the GC
	c := startFlightServer(t, e, mem, func(f *FlightServer) { f.WithUpdater(e.upd) })
	const cmd = `{"op":"point_in_time","views":["user_features"],"features":["view_count_1h"]}`
	i64 := func(vs ...int64) arrow.Array {
		b := array.NewInt64Builder(mem)
		defer b.Release()
		b.AppendValues(vs, nil)
		return b.NewArray()
	}
	strs := func(vs ...string) arrow.Array {
		b := array.NewStringBuilder(mem)
		defer b.Release()
		b.AppendValues(vs, nil)
		return b.NewArray()
	}
	dt := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int64, ValueType: arrow.BinaryTypes.String}
	pastDict := array.NewDictionaryArray(dt, i64(0, 1000), strs("u00001"))
	record := func(names []string, cols ...arrow.Array) arrow.Record {
		fields := make([]arrow.Field, len(cols))
		for i, c := range cols {
			fields[i] = arrow.Field{Name: names[i], Type: c.DataType(), Nullable: true}
		}
		return array.NewRecord(arrow.NewSchema(fields, nil), cols, int64(cols[0].Len()))
	}
	for name, rec := range map[string]arrow.Record{
		"id offsets descend": record([]string{"user_id", "ts"}, malformedStrings(), i64(baseTS, baseTS)),
		"id past dictionary": record([]string{"user_id", "ts"}, pastDict, i64(baseTS, baseTS)),
	} {
		t.Run(name, func(t *testing.T) {
			out, err := exchangeRecords(t, c, mem, cmd, []arrow.Record{rec})
			for _, r := range out {
				r.Release()
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spine: malformed Arrow data in the batch from row 0") {
				t.Fatalf("err = %v, want INVALID_ARGUMENT: spine: malformed Arrow data", err)
			}
		})
	}
	t.Run("label offsets descend", func(t *testing.T) {
		// A pass-through column is not read, only sent back as it came.
		rec := record([]string{"user_id", "ts", "label"}, strs("u00001", "u00000"), i64(baseTS, baseTS), malformedStrings())
		// In one batch, and in three, which are joined as one slice (their
		// columns concatenated).
		for _, recs := range [][]arrow.Record{{rec}, {rec, rec, rec}} {
			out, err := exchangeRecords(t, c, mem, cmd, recs)
			for _, r := range out {
				r.Release()
			}
			if err != nil && status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want an answer or INVALID_ARGUMENT", err)
			}
		}
	})
	t.Run("doput", func(t *testing.T) {
		rec := record([]string{"user_id", "item_id", "behavior", "ts"}, malformedStrings(), strs("i1", "i2"), strs("view", "view"), i64(baseTS, baseTS))
		stream, err := c.DoPut(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		w := flight.NewRecordWriter(stream, ipc.WithSchema(rec.Schema()), ipc.WithAllocator(mem))
		w.SetFlightDescriptor(&flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"events"}})
		_ = w.Write(rec)
		_ = w.Close()
		_ = stream.CloseSend()
		_, err = stream.Recv()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "stream: malformed Arrow data in the batch from row 0") {
			t.Fatalf("err = %v, want INVALID_ARGUMENT: stream: malformed Arrow data", err)
		}
	})
	// And the server still answers.
	spine := spineOf(mem, []string{"u00001"}, arrow.PrimitiveTypes.Int64, []int64{baseTS + 1})
	defer spine.Release()
	out, err := exchangeRecords(t, c, mem, cmd, []arrow.Record{spine})
	if err != nil || len(out) != 1 || out[0].Column(2).(*array.Int64).Value(0) != 1 {
		t.Fatalf("after: %v, %v", out, err)
	}
	out[0].Release()
}

// A spine of many slices is joined by partitions of its entities
// (pitjoin.go): its answer equals that of the same spine joined in one
// slice, for every feature of a user and an item view (counts, rates,
// times, strings and lists), ids with no events, rows in no order over
// many client batches, and more slices than partitions.
func TestPartitionedJoinMatchesOneSlice(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(5, 6))
	behaviors := []string{"view", "view", "view", "cart", "fav", "purchase"}
	var evs []*recsysv1.Event
	for i := range 3000 {
		evs = append(evs, &recsysv1.Event{UserId: fmt.Sprintf("u%03d", rng.IntN(60)), ItemId: fmt.Sprintf("i%02d", rng.IntN(40)),
			CategoryId: fmt.Sprintf("c%d", rng.IntN(5)), Behavior: behaviors[rng.IntN(len(behaviors))], Ts: baseTS + int64(i)*20_000 + rng.Int64N(20_000)})
	}
	e.ingest(t, evs)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	one := startFlightServer(t, e, mem, func(f *FlightServer) { f.joinValues = 1 << 30 })
	spillDir := t.TempDir()
	var parted *FlightServer
	many := startFlightServer(t, e, mem, func(f *FlightServer) {
		f.joinValues, parted = 2000, f
		f.WithSpill(spillDir, 0, 0)
	})
	sch := arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int64}, {Name: "user_id", Type: arrow.BinaryTypes.String},
		{Name: "item_id", Type: arrow.BinaryTypes.String}, {Name: "ts", Type: arrow.PrimitiveTypes.Int64}}, nil)
	span := int64(len(evs)) * 20_000
	const cmd = `{"op":"point_in_time","views":["user_features","item_features"]}`
	for _, byUser := range []bool{false, true} {
		t.Run(fmt.Sprintf("by user %v", byUser), func(t *testing.T) {
			users := make([]string, 16504)
			for r := range users {
				users[r] = fmt.Sprintf("u%03d", rng.IntN(70)) // 10 never seen
			}
			if byUser {
				// The user view is joined in spine order, the item view by
				// partitions.
				slices.Sort(users)
			}
			var recs []arrow.Record
			rows := 0
			for _, n := range []int{1, 500, 7000, 3, 9000} {
				b := array.NewRecordBuilder(mem, sch)
				for range n {
					b.Field(0).(*array.Int64Builder).Append(int64(rows))
					b.Field(1).(*array.StringBuilder).Append(users[rows])
					b.Field(2).(*array.StringBuilder).Append(fmt.Sprintf("i%02d", rng.IntN(45)))
					b.Field(3).(*array.Int64Builder).Append(baseTS - 3_600_000 + rng.Int64N(span+2*3_600_000))
					rows++
				}
				recs = append(recs, b.NewRecord())
				b.Release()
			}
			defer func() {
				for _, r := range recs {
					r.Release()
				}
			}()
			if p := joinParts(int64(rows), parted.joinRows(1)); p < 2 {
				t.Fatalf("the spine is joined in %d partitions", p)
			}
			table := func(c flight.Client) arrow.Table {
				out, err := exchangeRecords(t, c, mem, cmd, recs)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					for _, r := range out {
						r.Release()
					}
				}()
				return array.NewTableFromRecords(out[0].Schema(), out)
			}
			want, got := table(one), table(many)
			defer want.Release()
			defer got.Release()
			if want.NumRows() != int64(rows) || got.NumRows() != int64(rows) {
				t.Fatalf("%d and %d rows back, want %d", want.NumRows(), got.NumRows(), rows)
			}
			if !want.Schema().Equal(got.Schema()) {
				t.Fatalf("schemas differ:\n%s\n%s", want.Schema(), got.Schema())
			}
			present := 0
			for c := range int(want.NumCols()) {
				w, g := want.Column(c).Data(), got.Column(c).Data()
				if !array.ChunkedEqual(w, g) {
					t.Fatalf("column %s differs", want.Schema().Field(c).Name)
				}
				present += w.Len() - w.NullN()
			}
			if present < rows*int(want.NumCols())/3 {
				t.Fatalf("only %d values present of %d: the spine joins too little", present, rows*int(want.NumCols()))
			}
			if left, _ := os.ReadDir(spillDir); len(left) != 0 {
				t.Fatalf("%d files left in the spill dir", len(left))
			}
		})
	}
	mem.AssertSize(t, 0)
}
