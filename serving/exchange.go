package serving

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/streamrec/recsys/featurestore"
)

// exchangeCmd is the command of DoExchange.
type exchangeCmd struct {
	Op       string   `json:"op"`
	Views    []string `json:"views"`
	Features []string `json:"features,omitempty"`
}

// pitView is one view of a point-in-time join: which spine column holds
// its ids and which of its features to add.
type pitView struct {
	view   *featurestore.View
	idCol  int
	idx    []int
	fields []arrow.Field
}

// DoExchange with {"op": "point_in_time", "views": [...], "features": [...]}
// joins a spine streamed by the client with feature values as of each row's
// time: the client sends record batches with the id column of every view
// (user_id, item_id; any string-like type) and a ts column (a timestamp of
// any unit, or int64 Unix ms: an integer that can only be seconds or
// microseconds is refused), plus any other columns (labels), which pass
// through; the server sends back the
// spine with one column per feature, named <entity>.<feature>, read as of
// that row's ts. No event after ts is ever used: window features are exact
// at their newest edge, and features without history are null unless the
// entity had no later event (status not_versioned otherwise).
func (f *FlightServer) DoExchange(stream flight.FlightService_DoExchangeServer) error {
	// Every buffer of a spine's batch (and of its dictionaries, and every
	// decompressed body) is allocated from a budget: a batch that claims
	// more is refused before the memory is taken.
	budget := &spineBudget{mem: f.mem, limit: f.maxSpineBytes()}
	defer budget.freeAll() // last: after the reader and the batches are released
	rdr, err := flight.NewRecordReader(stream, ipc.WithAllocator(budget))
	if err != nil {
		if errors.Is(err, errOverBudget) {
			return budget.refusal(0)
		}
		return invalidArg("stream", "want a FlightDescriptor and a spine schema: %v", err)
	}
	defer rdr.Release()
	d := rdr.LatestFlightDescriptor()
	if d == nil || d.Type != flight.DescriptorCMD {
		return invalidArg("descriptor", "want a command {\"op\": \"point_in_time\", \"views\": [...], \"features\": [...]}")
	}
	var cmd exchangeCmd
	dec := json.NewDecoder(bytes.NewReader(d.Cmd))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cmd); err != nil {
		return invalidArg("descriptor.cmd", "not a JSON object {\"op\", \"views\", \"features\"}: %v", err)
	}
	if cmd.Op != "point_in_time" {
		return invalidArg("op", "%q is not point_in_time", cmd.Op)
	}
	if len(cmd.Views) == 0 {
		return invalidArg("views", "required: at least one view")
	}
	spine := rdr.Schema()
	tsCol := slices.IndexFunc(spine.Fields(), func(fl arrow.Field) bool { return fl.Name == "ts" })
	if tsCol < 0 {
		return invalidArg("spine", "no ts column (%s)", timeLikeTypes)
	}
	if !isTimeLike(spine.Field(tsCol).Type) {
		return invalidArg("spine.ts", "type %s is not allowed (want %s)", spine.Field(tsCol).Type, timeLikeTypes)
	}
	views, out, err := f.planJoin(spine, cmd)
	if err != nil {
		return err
	}
	// Spill the whole spine to disk before answering: a client that writes
	// all of it before reading (the usual pyarrow pattern) would otherwise
	// deadlock with a server blocked on sending, once gRPC's flow-control
	// windows fill; and held in memory, a spine's size would be bounded by
	// memory. Only one batch is in memory at a time, on the way in and on
	// the way out.
	sp, err := f.newSpill(spine)
	if err != nil {
		return err
	}
	defer sp.close()
	ids := make([]*spineIDs, len(views))
	for v := range ids {
		ids[v] = newSpineIDs()
	}
	var total int64
	for rdr.Next() {
		if err := stream.Context().Err(); err != nil {
			return toStatus(err)
		}
		rec := rdr.Record()
		// Times are checked as they come: a bad one is refused at once,
		// not once the whole spine is spilled.
		if err := checkSpineTimes(rec.Column(tsCol), total); err != nil {
			return err
		}
		if err := followIDs(rec, views, ids, total); err != nil {
			return err
		}
		total += rec.NumRows()
		if err := sp.write(rec); err != nil {
			return sp.refusal(err, total)
		}
	}
	if err := rdr.Err(); err != nil {
		if errors.Is(err, errOverBudget) {
			return budget.refusal(total)
		}
		return invalidArg("spine", "%v", err)
	}
	w := flight.NewRecordWriter(stream, ipc.WithSchema(out), ipc.WithAllocator(f.mem))
	defer w.Close()
	return f.answerJoin(w, out, sp, total, tsCol, views, ids, func() error { return toStatus(stream.Context().Err()) })
}

// answerJoin joins the spine spilled to sp (total rows, its times in
// column tsCol, ids followed its views' ids) with the features of views,
// and writes the answer, of schema out, to w: in slices of the spine if it
// is small or in order of every view's ids, else by partitions of its
// entities (pitjoin.go). check returns the error that stops it (the
// request's end).
func (f *FlightServer) answerJoin(w *flight.Writer, out *arrow.Schema, sp *spill, total int64, tsCol int, views []pitView, ids []*spineIDs, check func() error) error {
	now := f.store.Now()
	nf := 0
	for _, pv := range views {
		nf += len(pv.idx)
	}
	sliceRows := f.joinRows(nf)
	sorted := true
	for _, s := range ids {
		sorted = sorted && s.sorted
	}
	if joinParts(total, sliceRows) > 1 && !sorted {
		return f.joinParted(w, out, sp, total, tsCol, views, ids, now, sliceRows, check)
	}
	back, err := sp.rewind(f.mem)
	if err != nil {
		return sp.refusal(err, total)
	}
	// The spine is joined in slices of sliceRows rows, whatever the
	// client's batches (a slice of many entities walks their records
	// forward); the next slice is joined while the last one is sent.
	return pipeline(w, func(send func(arrow.Record) bool) error {
		var first int64 // spine row number of the slice's first row
		var pending []arrow.Record
		var rows int64 // in pending
		defer func() {
			for _, r := range pending {
				r.Release()
			}
		}()
		join := func() (bool, error) {
			slice, err := concatRecords(f.mem, pending, first)
			for _, r := range pending {
				r.Release()
			}
			pending = pending[:0]
			if err != nil {
				return false, err
			}
			res, err := f.joinBatch(out, slice, first, tsCol, views, now)
			slice.Release()
			first, rows = first+rows, 0
			if err != nil {
				return false, err
			}
			return send(res), nil
		}
		for back.Next() {
			if err := check(); err != nil {
				return err
			}
			rec := back.Record()
			for lo := int64(0); lo < rec.NumRows(); {
				hi := min(lo+sliceRows-rows, rec.NumRows())
				pending = append(pending, rec.NewSlice(lo, hi))
				rows += hi - lo
				lo = hi
				if rows == sliceRows {
					if ok, err := join(); !ok || err != nil {
						return err
					}
				}
			}
		}
		if err := back.Err(); err != nil {
			return toStatus(fmt.Errorf("read spilled spine: %w", err))
		}
		if rows > 0 {
			if _, err := join(); err != nil {
				return err
			}
		}
		return nil
	})
}

// concatRecords returns the records recs (of one schema; spine rows from
// first) as one (to release): the record itself if there is one, else a
// copy, a malformed column INVALID_ARGUMENT.
func concatRecords(mem memory.Allocator, recs []arrow.Record, first int64) (_ arrow.Record, err error) {
	defer recoverMalformed(&err, "spine", first)
	if len(recs) == 1 {
		recs[0].Retain()
		return recs[0], nil
	}
	sch := recs[0].Schema()
	cols := make([]arrow.Array, sch.NumFields())
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	var n int64
	for _, r := range recs {
		n += r.NumRows()
	}
	parts := make([]arrow.Array, len(recs))
	for c := range cols {
		for i, r := range recs {
			parts[i] = r.Column(c)
		}
		var err error
		if cols[c], err = array.Concatenate(parts, mem); err != nil {
			return nil, invalidArg("spine", "column %s: %v", sch.Field(c).Name, err)
		}
	}
	return array.NewRecord(sch, cols, n), nil
}

// pipeline writes to w the records that produce sends, from its own
// goroutine, so that the next record is made while the last one is
// written: at most two are held at a time. send reports false once
// writing has failed (produce should then return). pipeline returns the
// first error of either side, after produce has returned.
func pipeline(w *flight.Writer, produce func(send func(arrow.Record) bool) error) error {
	recs := make(chan arrow.Record)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		defer close(recs)
		done <- produce(func(rec arrow.Record) bool {
			select {
			case recs <- rec:
				return true
			case <-stop:
				rec.Release()
				return false
			}
		})
	}()
	var werr error
	for rec := range recs {
		if werr == nil {
			if err := w.Write(rec); err != nil {
				werr = fmt.Errorf("write joined batch: %w", err)
				close(stop)
			}
		}
		rec.Release()
	}
	return cmp.Or(<-done, werr)
}

// planJoin returns the views of a point-in-time join of spine asked by
// cmd, and the schema of its answer.
func (f *FlightServer) planJoin(spine *arrow.Schema, cmd exchangeCmd) ([]pitView, *arrow.Schema, error) {
	var views []pitView
	used := map[string]bool{}
	for _, name := range cmd.Views {
		v, err := f.store.Definitions().View(name)
		if err != nil || !v.Scannable() {
			return nil, nil, status.Errorf(codes.NotFound, "views: %q is not a user or item view", name)
		}
		pv := pitView{view: v, idCol: slices.IndexFunc(spine.Fields(), func(fl arrow.Field) bool { return fl.Name == v.IDColumn })}
		if pv.idCol < 0 || !isStringLike(spine.Field(pv.idCol).Type) {
			return nil, nil, invalidArg("spine", "view %s needs a string column %s (%s)", v.Name, v.IDColumn, stringLikeTypes)
		}
		names := cmd.Features
		if len(names) == 0 {
			for _, ft := range v.Features {
				names = append(names, ft.Name)
			}
		}
		for _, name := range names { // in the order asked for
			i := slices.IndexFunc(v.Features, func(ft featurestore.Feature) bool { return ft.Name == name })
			if i < 0 {
				continue
			}
			ft := v.Features[i]
			pv.idx = append(pv.idx, i)
			used[ft.Name] = true
			fl := arrow.Field{Name: v.Entity + "." + ft.Name, Type: arrowType(ft.Kind), Nullable: true}
			if spine.HasField(fl.Name) {
				return nil, nil, invalidArg("spine", "column %s collides with a feature column", fl.Name)
			}
			pv.fields = append(pv.fields, fl)
		}
		views = append(views, pv)
	}
	for _, name := range cmd.Features {
		if !used[name] {
			return nil, nil, invalidArg("features", "%q is in none of the views", name)
		}
	}
	fields := slices.Clone(spine.Fields())
	for _, pv := range views {
		fields = append(fields, pv.fields...)
	}
	out := arrow.NewSchema(fields, nil)
	return views, out, nil
}

// defaultJoinValues bounds the feature values of one slice of a batch
// joined at once (see DoExchange): about 40 MiB of featurestore.Values, a
// slice of 20 K to 170 K rows for 24 to 3 features.
const defaultJoinValues = 1 << 19

// joinRows is the most spine rows joined at once, for nf features.
func (f *FlightServer) joinRows(nf int) int64 {
	n := f.joinValues
	if n <= 0 {
		n = defaultJoinValues
	}
	return int64(max(n/max(nf, 1), 1))
}

// defaultMaxSpineBytes bounds the memory one batch of a spine (its
// buffers, decompressed bodies, and the dictionaries read so far) holds
// while it is received.
const defaultMaxSpineBytes = 256 << 20

func (f *FlightServer) maxSpineBytes() int64 {
	if f.spineBytes > 0 {
		return f.spineBytes
	}
	return defaultMaxSpineBytes
}

// errOverBudget is the panic of a spineBudget's allocator past its limit
// (the IPC reader turns panics into errors).
var errOverBudget = errors.New("spine over its memory budget")

// spineBudget is the allocator of one spine: it passes allocations to mem
// while the bytes it holds stay within limit. It
// keeps its live allocations, so that freeAll can return those that the
// IPC reader drops when it gives up on a batch midway (over the budget,
// or malformed).
type spineBudget struct {
	mem   memory.Allocator
	limit int64
	used  atomic.Int64
	mu    struct {
		sync.Mutex
		live map[*byte][]byte // by its first byte, every allocation
	}
}

func (b *spineBudget) take(n int64) bool {
	if b.used.Add(n) > b.limit {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *spineBudget) track(old, buf []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.live == nil {
		b.mu.live = make(map[*byte][]byte)
	}
	if len(old) > 0 {
		delete(b.mu.live, &old[0])
	}
	if len(buf) > 0 {
		b.mu.live[&buf[0]] = buf
	}
}

func (b *spineBudget) Allocate(size int) []byte {
	if !b.take(int64(size)) {
		panic(errOverBudget)
	}
	buf := b.mem.Allocate(size)
	b.track(nil, buf)
	return buf
}

func (b *spineBudget) Reallocate(size int, buf []byte) []byte {
	if !b.take(int64(size - len(buf))) {
		panic(errOverBudget)
	}
	out := b.mem.Reallocate(size, buf)
	b.track(buf, out)
	return out
}

func (b *spineBudget) Free(buf []byte) {
	b.used.Add(-int64(len(buf)))
	b.track(buf, nil)
	b.mem.Free(buf)
}

// freeAll frees what is still allocated, once nothing of the spine is
// referenced any more (every batch and the reader released).
func (b *spineBudget) freeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, buf := range b.mu.live {
		b.mem.Free(buf)
	}
	b.mu.live = nil
}

// refusal is the error of a spine batch past its budget, rows rows read.
func (b *spineBudget) refusal(rows int64) error {
	return invalidArg("spine", "a batch needs more than %d MiB (its buffers, dictionaries and decompressed body; %d rows read before it); send smaller batches", b.limit>>20, rows)
}

// spineTimes reads the ts column col of a spine batch whose first row is
// spine row first into ts (nil: only checks it).
func spineTimes(col arrow.Array, first int64, ts []int64) error {
	read := msReader(col)
	isInt := col.DataType().ID() == arrow.INT64
	for i := range col.Len() {
		t, valid, bad := read(i)
		switch {
		case !valid:
			return invalidArg("spine.ts", "row %d is null", first+int64(i))
		case bad != "":
			return invalidArg("spine.ts", "row %d: %s", first+int64(i), bad)
		case t < 0:
			return invalidArg("spine.ts", "row %d is %d, before 1970 (Unix milliseconds expected)", first+int64(i), t)
		}
		if isInt {
			// Integers are Unix milliseconds; values that can only be in
			// another unit would silently read as 1970 or the far future.
			if why := intMillisUnitError(t); why != "" {
				return invalidArg("spine.ts", "row %d: %s", first+int64(i), why)
			}
		}
		if ts != nil {
			ts[i] = t
		}
	}
	return nil
}

// followIDs adds the ids of every view of a spine batch (its first row
// spine row first) to ids, a malformed column INVALID_ARGUMENT.
func followIDs(rec arrow.Record, views []pitView, ids []*spineIDs, first int64) (err error) {
	defer recoverMalformed(&err, "spine", first)
	for v, pv := range views {
		ids[v].add(rec.Column(pv.idCol))
	}
	return nil
}

// checkSpineTimes is spineTimes(col, first, nil), a malformed column
// INVALID_ARGUMENT too.
func checkSpineTimes(col arrow.Array, first int64) (err error) {
	defer recoverMalformed(&err, "spine", first)
	return spineTimes(col, first, nil)
}

// joinBatch returns one spine batch joined with its features (to
// release); first is the spine row number of its first row (errors name
// spine rows).
func (f *FlightServer) joinBatch(out *arrow.Schema, rec arrow.Record, first int64, tsCol int, views []pitView, now int64) (res arrow.Record, err error) {
	defer recoverMalformed(&err, "spine", first)
	n := int(rec.NumRows())
	ts := make([]int64, n)
	if err := spineTimes(rec.Column(tsCol), first, ts); err != nil {
		return nil, err
	}
	return joinedRecord(f.mem, out, rec, views, func(_ int, pv pitView, bb *batchBuilder) error {
		ids := stringReader(rec.Column(pv.idCol))
		idList := make([]string, n)
		for i := range idList {
			id, valid := ids(i)
			if !valid {
				return invalidArg("spine."+pv.view.IDColumn, "row %d is null", first+int64(i))
			}
			idList[i] = id
		}
		rows, err := f.store.GetEach(pv.view, idList, pv.idx, now, ts)
		if err != nil {
			return toStatus(err)
		}
		for i := range rows {
			bb.append(&rows[i])
		}
		return nil
	})
}

// joinedRecord returns the spine slice rec with the feature columns of
// every view (to release), in the order of schema out: fill appends the
// values of view v (pv), a row per spine row, to bb.
func joinedRecord(mem memory.Allocator, out *arrow.Schema, rec arrow.Record, views []pitView, fill func(v int, pv pitView, bb *batchBuilder) error) (arrow.Record, error) {
	cols := make([]arrow.Array, 0, out.NumFields())
	for i := range rec.NumCols() {
		a := rec.Column(int(i))
		a.Retain()
		cols = append(cols, a)
	}
	defer func() {
		for _, c := range cols {
			c.Release()
		}
	}()
	for v, pv := range views {
		p := &plan{view: pv.view, idx: pv.idx}
		bb := &batchBuilder{p: p, b: array.NewRecordBuilder(mem, arrow.NewSchema(append([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, pv.fields...), nil))}
		err := fill(v, pv, bb)
		if err != nil {
			bb.release()
			return nil, err
		}
		joined := bb.b.NewRecord()
		bb.release()
		for j := 1; j < int(joined.NumCols()); j++ {
			a := joined.Column(j)
			a.Retain()
			cols = append(cols, a)
		}
		joined.Release()
	}
	return array.NewRecord(out, cols, rec.NumRows()), nil
}
