package serving

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
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
	rdr, err := flight.NewRecordReader(stream, ipc.WithAllocator(f.mem))
	if err != nil {
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
	var views []pitView
	used := map[string]bool{}
	for _, name := range cmd.Views {
		v, err := f.store.Definitions().View(name)
		if err != nil || !v.Scannable() {
			return status.Errorf(codes.NotFound, "views: %q is not a user or item view", name)
		}
		pv := pitView{view: v, idCol: slices.IndexFunc(spine.Fields(), func(fl arrow.Field) bool { return fl.Name == v.IDColumn })}
		if pv.idCol < 0 || !isStringLike(spine.Field(pv.idCol).Type) {
			return invalidArg("spine", "view %s needs a string column %s (%s)", v.Name, v.IDColumn, stringLikeTypes)
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
				return invalidArg("spine", "column %s collides with a feature column", fl.Name)
			}
			pv.fields = append(pv.fields, fl)
		}
		views = append(views, pv)
	}
	for _, name := range cmd.Features {
		if !used[name] {
			return invalidArg("features", "%q is in none of the views", name)
		}
	}
	fields := slices.Clone(spine.Fields())
	for _, pv := range views {
		fields = append(fields, pv.fields...)
	}
	out := arrow.NewSchema(fields, nil)
	w := flight.NewRecordWriter(stream, ipc.WithSchema(out), ipc.WithAllocator(f.mem))
	defer w.Close()
	// Read the whole spine before answering: a client that writes all of it
	// before reading (the usual pyarrow pattern) would otherwise deadlock
	// with a server blocked on sending, once gRPC's flow-control windows
	// fill. The spine is bounded by maxSpineRows.
	var spineRecs []arrow.Record
	defer func() {
		for _, r := range spineRecs {
			r.Release()
		}
	}()
	var total, bytes int64
	for rdr.Next() {
		if err := stream.Context().Err(); err != nil {
			return toStatus(err)
		}
		rec := rdr.Record()
		total += rec.NumRows()
		bytes += recordBytes(rec)
		if total > maxSpineRows {
			return invalidArg("spine", "more than %d rows; split it into several exchanges", maxSpineRows)
		}
		if bytes > f.maxSpineBytes() {
			return invalidArg("spine", "more than %d MiB held (%d rows so far); split it into several exchanges", f.maxSpineBytes()>>20, total)
		}
		rec.Retain()
		spineRecs = append(spineRecs, rec)
	}
	if err := rdr.Err(); err != nil {
		return invalidArg("spine", "%v", err)
	}
	now := f.store.Now()
	var first int64 // row number of rec's first row in the spine
	for _, rec := range spineRecs {
		if err := stream.Context().Err(); err != nil {
			return toStatus(err)
		}
		if err := f.joinBatch(w, out, rec, first, tsCol, views, now); err != nil {
			return err
		}
		first += rec.NumRows()
	}
	return nil
}

// maxSpineRows bounds one point-in-time join (the spine is held in memory).
const maxSpineRows = 20_000_000

// defaultMaxSpineBytes bounds the memory a spine holds: 20 M rows of
// short ids fit; longer ids or extra columns need several exchanges.
const defaultMaxSpineBytes = 256 << 20

func (f *FlightServer) maxSpineBytes() int64 {
	if f.spineBytes > 0 {
		return f.spineBytes
	}
	return defaultMaxSpineBytes
}

// recordBytes is the size of the buffers of rec's columns.
func recordBytes(rec arrow.Record) int64 {
	var n int64
	var add func(d arrow.ArrayData)
	add = func(d arrow.ArrayData) {
		for _, b := range d.Buffers() {
			if b != nil {
				n += int64(b.Len())
			}
		}
		for _, c := range d.Children() {
			add(c)
		}
	}
	for _, c := range rec.Columns() {
		add(c.Data())
	}
	return n
}

// joinBatch writes one spine batch joined with its features; first is
// the spine row number of its first row (errors name spine rows).
func (f *FlightServer) joinBatch(w *flight.Writer, out *arrow.Schema, rec arrow.Record, first int64, tsCol int, views []pitView, now int64) error {
	n := int(rec.NumRows())
	ts := make([]int64, n)
	read := msReader(rec.Column(tsCol))
	isInt := rec.Column(tsCol).DataType().ID() == arrow.INT64
	for i := range ts {
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
		ts[i] = t
	}
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
	for _, pv := range views {
		ids := stringReader(rec.Column(pv.idCol))
		p := &plan{view: pv.view, idx: pv.idx}
		bb := &batchBuilder{p: p, b: array.NewRecordBuilder(f.mem, arrow.NewSchema(append([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, pv.fields...), nil))}
		idList := make([]string, n)
		for i := range idList {
			id, valid := ids(i)
			if !valid {
				bb.release()
				return invalidArg("spine."+pv.view.IDColumn, "row %d is null", first+int64(i))
			}
			idList[i] = id
		}
		rows, err := f.store.GetEach(pv.view, idList, pv.idx, now, ts)
		if err != nil {
			bb.release()
			return toStatus(err)
		}
		for i := range rows {
			bb.append(&rows[i])
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
	res := array.NewRecord(out, cols, int64(n))
	defer res.Release()
	if err := w.Write(res); err != nil {
		return fmt.Errorf("write joined batch: %w", err)
	}
	return nil
}
