package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/updater"
)

const (
	// flightBatchRows is the most rows in one record batch.
	flightBatchRows = 64 << 10
	// flightBatchBytes is the estimated size at which a batch is sent early,
	// below gRPC's default 4 MiB message limit.
	flightBatchBytes = 3 << 20
	// maxTicketIDs is the most ids one command or ticket may name.
	maxTicketIDs = 100_000
)

// FlightServer serves feature views over Arrow Flight.
type FlightServer struct {
	flight.BaseFlightServer
	store     *featurestore.Store
	models    *models.Models
	upd       *updater.Updater // for the actions; may be nil
	backups   *BackupRoot      // where backup may write; nil: backups refused
	mem       memory.Allocator
	batchRows int // rows per record batch; flightBatchRows outside tests
	// spineBytes bounds the spine a point-in-time join holds;
	// defaultMaxSpineBytes when 0.
	spineBytes int64
	// joinValues bounds the feature values of a spine slice joined at
	// once; defaultJoinValues when 0.
	joinValues int
	spill      spillConfig // where and how much a spine spills (WithSpill)
	// snapshotBytes bounds the columnar snapshots of full scans
	// (snapshots.go): defaultSnapshotBytes when 0, none when negative.
	snapshotBytes int64
	snaps         snapshots
}

// WithSnapshotBytes bounds the columnar snapshots that full scans are
// served from (snapshots.go): 0 for the default (1 GiB), negative for none.
func (f *FlightServer) WithSnapshotBytes(n int64) *FlightServer {
	f.snapshotBytes = n
	return f
}

// WithUpdater enables the actions that need the updater (health, backup).
func (f *FlightServer) WithUpdater(u *updater.Updater) *FlightServer {
	f.upd = u
	return f
}

// WithBackups lets the backup action write under root (nil: refused).
func (f *FlightServer) WithBackups(root *BackupRoot) *FlightServer {
	f.backups = root
	return f
}

var flightActions = []*flight.ActionType{
	{Type: "health", Description: "Liveness and apply progress: {status, log_end_offset, applied_offset}."},
	{Type: "stats", Description: "Rows and record bytes per view, dead letters, disk bytes."},
	{Type: "backup", Description: "Write a consistent checkpoint of the data dir; body {\"dir\": \"name\"}: a new directory under the server's --backup.dir (a relative name, or an absolute path inside it)."},
}

// ListActions lists the actions of DoAction.
func (f *FlightServer) ListActions(_ *flight.Empty, stream flight.FlightService_ListActionsServer) error {
	for _, a := range flightActions {
		if err := stream.Send(a); err != nil {
			return err
		}
	}
	return nil
}

// DoAction runs health, stats or backup and sends one JSON result.
func (f *FlightServer) DoAction(a *flight.Action, stream flight.FlightService_DoActionServer) error {
	var body any
	switch a.GetType() {
	case "health":
		st := f.store.Stats()
		h := map[string]any{"status": "ok", "applied_offset": st.AppliedOffset}
		if f.upd != nil {
			h["log_end_offset"] = f.upd.LogEnd()
		}
		body = h
	case "stats":
		views := map[string]any{}
		for _, v := range f.store.Definitions().Views {
			if !v.Scannable() {
				continue
			}
			b, err := f.store.RecordBytes(v)
			if err != nil {
				return toStatus(err)
			}
			views[v.Name] = map[string]any{"rows": f.store.Count(v), "record_bytes": b}
		}
		ps, err := f.store.PebbleStats()
		if err != nil {
			return toStatus(err)
		}
		views[deadLettersView] = map[string]any{"rows": f.store.DeadLetterCount()}
		for _, t := range modelTables {
			views[t.name] = map[string]any{"rows": t.rows(f.store, f.models)}
		}
		body = map[string]any{"views": views, "disk_bytes": ps.DiskBytes}
	case "backup":
		var req struct {
			Dir string `json:"dir"`
		}
		dec := json.NewDecoder(bytes.NewReader(a.GetBody()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || req.Dir == "" {
			return invalidArg("body", "want {\"dir\": \"name\"} (a new directory under the server's --backup.dir)")
		}
		if f.upd == nil {
			return status.Error(codes.Unimplemented, "backup: not available on this server")
		}
		if f.backups == nil {
			return status.Error(codes.FailedPrecondition, "backup: not enabled on this server (start it with --backup.dir ROOT)")
		}
		dir, err := f.backups.Resolve(req.Dir)
		if err != nil {
			return err
		}
		if err := f.upd.Backup(dir); err != nil {
			return toStatus(err)
		}
		body = map[string]any{"dir": dir, "applied_offset": f.store.AppliedOffset()}
	default:
		return invalidArg("type", "unknown action %q (want health, stats or backup)", a.GetType())
	}
	b, err := json.Marshal(body)
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&flight.Result{Body: b})
}

// NewFlightServer returns a Flight service over store and its models m
// (the store's Options.Learner); mem is the Arrow allocator (nil: the Go
// allocator).
func NewFlightServer(store *featurestore.Store, m *models.Models, mem memory.Allocator) *FlightServer {
	if mem == nil {
		mem = memory.NewGoAllocator()
	}
	return &FlightServer{store: store, models: m, mem: mem, batchRows: flightBatchRows}
}

// GRPCServer returns a gRPC server carrying f (and reflection), with
// message limits large enough for any batch DoGet sends.
func (f *FlightServer) GRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(64 << 20), grpc.MaxSendMsgSize(64 << 20)}, opts...)...)
	flight.RegisterFlightServiceServer(gs, f)
	reflection.Register(gs)
	return gs
}

// flightQuery is both the JSON command of GetFlightInfo and the ticket of
// DoGet: tickets are self-contained, so any of them can be redeemed later,
// by any client, without server-side state.
type flightQuery struct {
	View    string   `json:"view"`
	Columns []string `json:"columns,omitempty"`
	IDs     []string `json:"ids,omitempty"`
	// AsOf (Unix ms) reads window features as of that event time. A ticket
	// of a query without as_of reads at redemption time.
	AsOf int64 `json:"as_of,omitempty"`
	// Partitions asks GetFlightInfo for this many endpoints of a full scan
	// (default: one per 250,000 rows, at most 8).
	Partitions int `json:"partitions,omitempty"`
	// Lo and Hi bound the ids of a partition's ticket: [lo, hi), hi "" = no bound.
	Lo string `json:"lo,omitempty"`
	Hi string `json:"hi,omitempty"`
}

const (
	rowsPerPartition = 250_000
	maxPartitions    = 64
)

// deadLettersView is the Flight view of the dead-letter store.
const deadLettersView = "dead_letters"

var deadLettersSchema = arrow.NewSchema([]arrow.Field{
	{Name: "received_at", Type: &arrow.TimestampType{Unit: arrow.Millisecond, TimeZone: "UTC"}},
	{Name: "code", Type: arrow.BinaryTypes.String},
	{Name: "reason", Type: arrow.BinaryTypes.String},
	{Name: "event_id", Type: arrow.BinaryTypes.String},
	{Name: "user_id", Type: arrow.BinaryTypes.String},
	{Name: "item_id", Type: arrow.BinaryTypes.String},
	{Name: "category_id", Type: arrow.BinaryTypes.String},
	{Name: "behavior", Type: arrow.BinaryTypes.String},
	{Name: "ts", Type: arrow.PrimitiveTypes.Int64},
}, nil)

// maxDeadLetterRows bounds one dead_letters read.
const maxDeadLetterRows = 1_000_000

// plan is a validated query.
type plan struct {
	q      flightQuery
	view   *featurestore.View
	idx    []int
	schema *arrow.Schema
	model  *modelTable // a model table instead of a view
}

func (f *FlightServer) planQuery(q flightQuery) (*plan, error) { return f.plan(q, true) }

// plan validates q; forTicket is false for GetSchema, which serves any view.
func (f *FlightServer) plan(q flightQuery, forTicket bool) (*plan, error) {
	if q.View == "" {
		return nil, invalidArg("view", "required (see ListFlights)")
	}
	if q.View == deadLettersView {
		if q.Columns != nil || q.IDs != nil || q.AsOf != 0 {
			return nil, invalidArg("view", "dead_letters takes no columns, ids or as_of")
		}
		return &plan{q: q, schema: deadLettersSchema}, nil
	}
	if t := modelTableNamed(q.View); t != nil {
		if q.Columns != nil || q.IDs != nil || q.AsOf != 0 || q.Partitions != 0 || q.Lo != "" || q.Hi != "" {
			return nil, invalidArg("view", "model table %s takes no columns, ids, as_of or partitions", t.name)
		}
		return &plan{q: q, schema: t.schema(f.models.FactorDim()), model: t}, nil
	}
	v, err := f.store.Definitions().View(q.View)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "view %q not found: %s", q.View, trimPkg(err))
	}
	if err := checkAsOf(q.AsOf); err != nil {
		return nil, err
	}
	if !v.Scannable() && q.IDs == nil && forTicket {
		return nil, invalidArg("ids", "view %s is read by id only: give ids", v.Name)
	}
	switch {
	case q.Partitions < 0 || q.Partitions > maxPartitions:
		return nil, invalidArg("partitions", "%d is outside 0 to %d", q.Partitions, maxPartitions)
	case q.IDs != nil && (q.Partitions != 0 || q.Lo != "" || q.Hi != ""):
		return nil, invalidArg("ids", "cannot be combined with partitions, lo or hi")
	case q.Hi != "" && q.Hi <= q.Lo:
		return nil, invalidArg("hi", "%q is not after lo %q", q.Hi, q.Lo)
	}
	cols := slices.DeleteFunc(slices.Clone(q.Columns), func(c string) bool { return c == v.IDColumn })
	if len(q.Columns) > 0 && len(cols) == 0 {
		return nil, invalidArg("columns", "no feature columns besides %s", v.IDColumn)
	}
	idx, err := v.Resolve(cols)
	if err != nil {
		return nil, invalidArg("columns", "%s", trimPkg(err))
	}
	if len(q.IDs) > maxTicketIDs {
		return nil, invalidArg("ids", "%d ids exceed the limit of %d", len(q.IDs), maxTicketIDs)
	}
	return &plan{q: q, view: v, idx: idx, schema: viewSchema(v, idx)}, nil
}

// viewSchema is the Arrow schema of features idx of v, after the id column.
func viewSchema(v *featurestore.View, idx []int) *arrow.Schema {
	fields := []arrow.Field{{Name: v.IDColumn, Type: arrow.BinaryTypes.String}}
	for _, i := range idx {
		f := v.Features[i]
		window := ""
		if f.Window > 0 {
			window = featurestore.FormatDuration(time.Duration(f.Window) * time.Millisecond)
		}
		fields = append(fields, arrow.Field{
			Name:     f.Name,
			Type:     arrowType(f.Kind),
			Nullable: true,
			Metadata: arrow.NewMetadata([]string{"description", "aggregation", "window", "versioned"},
				[]string{f.Doc, f.Agg, window, strconv.FormatBool(f.Versioned())}),
		})
	}
	ttl := ""
	if v.TTL > 0 {
		ttl = featurestore.FormatDuration(v.TTL)
	}
	md := arrow.NewMetadata([]string{"view", "entity", "ttl"}, []string{v.Name, v.Entity, ttl})
	return arrow.NewSchema(fields, &md)
}

func arrowType(k featurestore.Kind) arrow.DataType {
	switch k {
	case featurestore.KindTimestamp:
		return &arrow.TimestampType{Unit: arrow.Millisecond, TimeZone: "UTC"}
	case featurestore.KindString:
		return arrow.BinaryTypes.String
	case featurestore.KindStringList:
		return arrow.ListOf(arrow.BinaryTypes.String)
	case featurestore.KindFloat:
		return arrow.PrimitiveTypes.Float64
	default:
		return arrow.PrimitiveTypes.Int64
	}
}

// decodeDescriptor turns a PATH [view] or a JSON CMD descriptor into a plan.
func (f *FlightServer) decodeDescriptor(d *flight.FlightDescriptor) (*plan, error) {
	return f.decode(d, true)
}

func (f *FlightServer) decode(d *flight.FlightDescriptor, forTicket bool) (*plan, error) {
	if d == nil {
		return nil, invalidArg("descriptor", "required")
	}
	switch d.Type {
	case flight.DescriptorPATH:
		if len(d.Path) != 1 {
			return nil, invalidArg("descriptor.path", "want one element, the view name; got %d", len(d.Path))
		}
		return f.plan(flightQuery{View: d.Path[0]}, forTicket)
	case flight.DescriptorCMD:
		q, err := decodeQuery("descriptor.cmd", d.Cmd)
		if err != nil {
			return nil, err
		}
		return f.plan(q, forTicket)
	}
	return nil, invalidArg("descriptor.type", "unknown descriptor type %d", d.Type)
}

func decodeQuery(field string, b []byte) (flightQuery, error) {
	var q flightQuery
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&q); err != nil {
		return q, invalidArg(field, "not a JSON object {\"view\", \"columns\", \"ids\"}: %v", err)
	}
	if d.More() {
		return q, invalidArg(field, "data after the JSON object")
	}
	return q, nil
}

func (f *FlightServer) info(p *plan, d *flight.FlightDescriptor) (*flight.FlightInfo, error) {
	endpoints, err := f.endpoints(p)
	if err != nil {
		return nil, err
	}
	var rows int64
	if p.view != nil {
		rows = f.store.Count(p.view)
	} else if p.model != nil {
		rows = p.model.rows(f.store, f.models)
	} else {
		rows = f.store.DeadLetterCount()
	}
	if p.q.IDs != nil {
		rows = int64(len(p.q.IDs))
	}
	return &flight.FlightInfo{
		Schema:           flight.SerializeSchema(p.schema, f.mem),
		FlightDescriptor: d,
		Endpoint:         endpoints,
		TotalRecords:     rows,
		TotalBytes:       -1,
	}, nil
}

// endpoints splits a full scan of a view into partitions of disjoint id
// ranges, one self-contained ticket each, so that clients can read them in
// parallel (or on other replicas); other queries get one endpoint.
func (f *FlightServer) endpoints(p *plan) ([]*flight.FlightEndpoint, error) {
	q := p.q
	q.Partitions = 0
	k := 1
	if p.view != nil && p.q.IDs == nil && p.q.Lo == "" && p.q.Hi == "" {
		k = p.q.Partitions
		if k == 0 {
			k = min(8, 1+int(f.store.Count(p.view)/rowsPerPartition))
		}
	}
	bounds := []string{""}
	if k > 1 {
		splits, err := f.store.SplitIDs(p.view, k)
		if err != nil {
			return nil, toStatus(err)
		}
		bounds = append(bounds, splits...)
	}
	var eps []*flight.FlightEndpoint
	for i, lo := range bounds {
		q.Lo, q.Hi = lo, ""
		if i+1 < len(bounds) {
			q.Hi = bounds[i+1]
		}
		t, err := json.Marshal(q)
		if err != nil {
			return nil, toStatus(err)
		}
		eps = append(eps, &flight.FlightEndpoint{Ticket: &flight.Ticket{Ticket: t}})
	}
	return eps, nil
}

// ListFlights lists every feature view with its schema and row count.
func (f *FlightServer) ListFlights(_ *flight.Criteria, stream flight.FlightService_ListFlightsServer) error {
	for _, v := range f.store.Definitions().Views {
		if !v.Scannable() {
			continue
		}
		p, err := f.planQuery(flightQuery{View: v.Name})
		if err != nil {
			return err
		}
		info, err := f.info(p, &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{v.Name}})
		if err != nil {
			return err
		}
		if err := stream.Send(info); err != nil {
			return err
		}
	}
	for _, t := range modelTables {
		p, err := f.planQuery(flightQuery{View: t.name})
		if err != nil {
			return err
		}
		info, err := f.info(p, &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{t.name}})
		if err != nil {
			return err
		}
		if err := stream.Send(info); err != nil {
			return err
		}
	}
	if ScopeFrom(stream.Context()) < ScopeAdmin {
		return nil // dead letters are for admins
	}
	p, err := f.planQuery(flightQuery{View: deadLettersView})
	if err != nil {
		return err
	}
	info, err := f.info(p, &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{deadLettersView}})
	if err != nil {
		return err
	}
	return stream.Send(info)
}

// GetFlightInfo returns the schema, row count and ticket of a view or query.
func (f *FlightServer) GetFlightInfo(ctx context.Context, d *flight.FlightDescriptor) (*flight.FlightInfo, error) {
	p, err := f.decodeDescriptor(d)
	if err != nil {
		return nil, err
	}
	if p.view == nil && p.model == nil {
		if err := requireScope(ctx, ScopeAdmin, "the dead_letters view"); err != nil {
			return nil, err
		}
	}
	return f.info(p, d)
}

// GetSchema returns the schema of a view or query.
func (f *FlightServer) GetSchema(_ context.Context, d *flight.FlightDescriptor) (*flight.SchemaResult, error) {
	p, err := f.decode(d, false)
	if err != nil {
		return nil, err
	}
	return &flight.SchemaResult{Schema: flight.SerializeSchema(p.schema, f.mem)}, nil
}

// DoGet streams the rows a ticket names as record batches built straight
// from Pebble: the entities in ids (in order; missing ones with null
// features), or every entity of the view in id order.
func (f *FlightServer) DoGet(t *flight.Ticket, stream flight.FlightService_DoGetServer) error {
	q, err := decodeQuery("ticket", t.GetTicket())
	if err != nil {
		return err
	}
	p, err := f.planQuery(q)
	if err != nil {
		return err
	}
	if p.view == nil && p.model == nil {
		if err := requireScope(stream.Context(), ScopeAdmin, "the dead_letters view"); err != nil {
			return err
		}
	}
	w := flight.NewRecordWriter(stream, ipc.WithSchema(p.schema), ipc.WithAllocator(f.mem))
	defer w.Close()
	if p.model != nil {
		return f.doGetModel(p, w)
	}
	if p.view == nil {
		return f.doGetDeadLetters(w)
	}
	bb := newBatchBuilder(f.mem, p)
	defer bb.release()
	ctx := stream.Context()
	emit := func(row *featurestore.Row) error {
		bb.append(row)
		if bb.rows < f.batchRows && bb.bytes < flightBatchBytes {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return bb.flush(w)
	}
	if p.q.IDs != nil {
		rows, err := f.store.Get(p.view, p.q.IDs, p.idx, f.store.At(p.q.AsOf))
		if err != nil {
			return toStatus(err)
		}
		for i := range rows {
			if err := emit(&rows[i]); err != nil {
				return toStatus(err)
			}
		}
	} else {
		// A scan reads one published version: from its snapshot when
		// there is one to use, else entity by entity.
		held, err := f.store.Hold()
		if err != nil {
			return toStatus(err)
		}
		defer held.Close()
		rt := held.At(p.q.AsOf)
		if snap := f.snapshot(held, p, rt); snap != nil {
			return toStatus(snap.write(p, w))
		}
		if err := held.Scan(p.view, p.q.Lo, p.q.Hi, p.idx, rt, emit); err != nil {
			return toStatus(err)
		}
	}
	if bb.rows > 0 {
		return toStatus(bb.flush(w))
	}
	return nil
}

// batchBuilder accumulates rows of one plan into Arrow arrays.
type batchBuilder struct {
	p     *plan
	b     *array.RecordBuilder
	rows  int
	bytes int
}

func newBatchBuilder(mem memory.Allocator, p *plan) *batchBuilder {
	return &batchBuilder{p: p, b: array.NewRecordBuilder(mem, p.schema)}
}

func (bb *batchBuilder) append(row *featurestore.Row) {
	bb.b.Field(0).(*array.StringBuilder).Append(row.ID)
	bb.bytes += len(row.ID) + 8
	for j, i := range bb.p.idx {
		fb := bb.b.Field(j + 1)
		val := &row.Values[j]
		if val.Status != featurestore.StatusPresent {
			fb.AppendNull()
			continue
		}
		switch bb.p.view.Features[i].Kind {
		case featurestore.KindFloat:
			fb.(*array.Float64Builder).Append(val.Float)
			bb.bytes += 8
		case featurestore.KindInt:
			fb.(*array.Int64Builder).Append(val.Int)
			bb.bytes += 8
		case featurestore.KindTimestamp:
			fb.(*array.TimestampBuilder).Append(arrow.Timestamp(val.Int))
			bb.bytes += 8
		case featurestore.KindString:
			fb.(*array.StringBuilder).Append(val.Str)
			bb.bytes += len(val.Str) + 4
		case featurestore.KindStringList:
			lb := fb.(*array.ListBuilder)
			lb.Append(true)
			sb := lb.ValueBuilder().(*array.StringBuilder)
			for _, s := range val.List {
				sb.Append(s)
				bb.bytes += len(s) + 4
			}
			bb.bytes += 4
		}
	}
	bb.rows++
}

func (bb *batchBuilder) flush(w *flight.Writer) error {
	rec := bb.b.NewRecord()
	defer rec.Release()
	bb.rows, bb.bytes = 0, 0
	if err := w.Write(rec); err != nil {
		return fmt.Errorf("write batch: %w", err)
	}
	return nil
}

func (bb *batchBuilder) release() { bb.b.Release() }

// doGetDeadLetters streams the dead letters, newest first, in one batch of
// at most maxDeadLetterRows rows.
func (f *FlightServer) doGetDeadLetters(w *flight.Writer) error {
	dead, err := decodeDeadLetters(f.store, maxDeadLetterRows)
	if err != nil {
		return err
	}
	b := array.NewRecordBuilder(f.mem, deadLettersSchema)
	defer b.Release()
	for i, d := range dead {
		ev := d.GetEvent()
		b.Field(0).(*array.TimestampBuilder).Append(arrow.Timestamp(d.GetReceivedAt().AsTime().UnixMilli()))
		for j, s := range []string{d.Code, d.Reason, ev.GetEventId(), ev.GetUserId(), ev.GetItemId(), ev.GetCategoryId(), ev.GetBehavior()} {
			b.Field(1 + j).(*array.StringBuilder).Append(s)
		}
		b.Field(8).(*array.Int64Builder).Append(ev.GetTs())
		if (i+1)%f.batchRows == 0 || i == len(dead)-1 {
			rec := b.NewRecord()
			err := w.Write(rec)
			rec.Release()
			if err != nil {
				return toStatus(err)
			}
		}
	}
	return nil
}
