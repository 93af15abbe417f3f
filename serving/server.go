package serving

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
)

// Options configures a Server. Zero fields take the documented defaults.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// MaxBatch is the most events in one ingest request. Default 10,000.
	MaxBatch int
	// MaxBodyBytes bounds a REST request body. Default 16 MiB.
	MaxBodyBytes int64
	// MaxIDs is the most entity ids in one features:get call. Default 1,000.
	MaxIDs int
	// MaxK is the largest k for recommendations. Default 1,000.
	MaxK int
	// Metrics, when set, is served at /metrics.
	Metrics *Metrics
	// MaxReadyLag is how many log entries the updater may be behind while
	// /readyz still reports ready. Default 100,000.
	MaxReadyLag uint64
	// Source, when set, reports the positions of an outside source (Kafka
	// mode): stats and /readyz (its lag: records behind the partitions'
	// high watermarks) use them instead of the embedded log's, which stays
	// empty.
	Source func() SourceProgress
	// Starting, when set, says why the server is not ready yet while it
	// starts (loading its initial events); "" once it is.
	Starting func() string
}

// SourceProgress is where the updater stands in an outside source.
type SourceProgress struct {
	Applied, End uint64 // summed over the source's partitions
	Watermark    int64  // events older than this are late (Unix ms); 0 before the first
}

func (o *Options) ensureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 10_000
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 16 << 20
	}
	if o.MaxIDs <= 0 {
		o.MaxIDs = 1_000
	}
	if o.MaxK <= 0 {
		o.MaxK = 1_000
	}
	if o.MaxReadyLag == 0 {
		o.MaxReadyLag = 100_000
	}
}

// Server implements the recsys.v1 services over a store and an updater.
type Server struct {
	recsysv1.UnimplementedEventServiceServer
	recsysv1.UnimplementedFeatureServiceServer
	recsysv1.UnimplementedRecommendServiceServer
	recsysv1.UnimplementedAdminServiceServer

	store   *featurestore.Store
	models  *models.Models
	upd     *updater.Updater
	opts    Options
	rec     *recommender
	streams *orderedStreams
}

// New returns a Server over store and its models m (the store's
// Options.Learner).
func New(store *featurestore.Store, m *models.Models, upd *updater.Updater, opts Options) *Server {
	opts.ensureDefaults()
	rec := &recommender{store: store, rec: recommend.New(store, m)}
	return &Server{store: store, models: m, upd: upd, opts: opts, rec: rec, streams: newOrderedStreams()}
}

// GRPCServer returns a gRPC server with every recsys.v1 service of s, the
// health service (SERVING; the caller shuts it down) and reflection.
func (s *Server) GRPCServer(opts ...grpc.ServerOption) (*grpc.Server, *health.Server) {
	gs := grpc.NewServer(opts...)
	recsysv1.RegisterEventServiceServer(gs, s)
	recsysv1.RegisterFeatureServiceServer(gs, s)
	recsysv1.RegisterRecommendServiceServer(gs, s)
	recsysv1.RegisterAdminServiceServer(gs, s)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return gs, hs
}

// Ingest implements EventService.Ingest.
func (s *Server) Ingest(ctx context.Context, req *recsysv1.IngestRequest) (*recsysv1.IngestResponse, error) {
	if len(req.GetEvents()) > s.opts.MaxBatch {
		return nil, invalidArg("events", "batch of %d events exceeds the limit of %d", len(req.Events), s.opts.MaxBatch)
	}
	return s.ingest(ctx, req.GetEvents(), nil, nil)
}

// ingest appends events (at positions index in the caller's batch; nil
// means the identity) and merges rejections found earlier by a decoder.
func (s *Server) ingest(ctx context.Context, events []*recsysv1.Event, index []int, rejected []*recsysv1.Rejection) (*recsysv1.IngestResponse, error) {
	if len(events) == 0 && len(rejected) == 0 {
		return nil, invalidArg("events", "required: the batch is empty")
	}
	res, err := s.upd.Ingest(ctx, events, index)
	if err != nil {
		return nil, toStatus(err)
	}
	rejected = append(rejected, res.Rejected...)
	slices.SortFunc(rejected, func(a, b *recsysv1.Rejection) int { return int(a.Index) - int(b.Index) })
	if res.Accepted == 0 {
		return nil, rejectedErr(rejected)
	}
	return &recsysv1.IngestResponse{Accepted: int32(res.Accepted), Rejected: rejected}, nil
}

// rejectedErr is the error for a batch in which every event was rejected:
// INVALID_ARGUMENT whose message names the first offending field, with one
// BadRequest field violation per rejected event (reason = rejection code).
func rejectedErr(rejected []*recsysv1.Rejection) error {
	var b strings.Builder
	violations := make([]*errdetails.BadRequest_FieldViolation, 0, min(len(rejected), maxViolations))
	for i, r := range rejected {
		field := rejectionField(r)
		if i < maxViolations {
			violations = append(violations, &errdetails.BadRequest_FieldViolation{Field: field, Description: r.Reason, Reason: r.Code})
		}
		switch {
		case i == 5:
			fmt.Fprintf(&b, "; and %d more", len(rejected)-i)
		case i < 5:
			if i > 0 {
				b.WriteString("; ")
			}
			fmt.Fprintf(&b, "events[%d]", r.Index)
			if r.Field != "event" {
				b.WriteString(".")
			} else {
				b.WriteString(": ")
			}
			b.WriteString(strings.TrimPrefix(r.Reason, "event: "))
		}
	}
	return statusWithViolations(codes.InvalidArgument, b.String(), violations)
}

// maxViolations bounds the field violations attached to one error.
const maxViolations = 100

// rejectionField is the request path of a rejected event's field.
func rejectionField(r *recsysv1.Rejection) string {
	if r.Field == "event" {
		return fmt.Sprintf("events[%d]", r.Index)
	}
	return fmt.Sprintf("events[%d].%s", r.Index, r.Field)
}

// GetUserFeatures implements FeatureService.GetUserFeatures.
func (s *Server) GetUserFeatures(ctx context.Context, req *recsysv1.GetUserFeaturesRequest) (*recsysv1.EntityFeatures, error) {
	if err := checkID("user_id", req.GetUserId()); err != nil {
		return nil, err
	}
	rd, err := s.read("user_features", []string{req.UserId}, req.Features, 0, false)
	if err != nil {
		return nil, err
	}
	return rd.rowsProto().Entities[0], nil
}

// GetItemFeatures implements FeatureService.GetItemFeatures.
func (s *Server) GetItemFeatures(ctx context.Context, req *recsysv1.GetItemFeaturesRequest) (*recsysv1.EntityFeatures, error) {
	if err := checkID("item_id", req.GetItemId()); err != nil {
		return nil, err
	}
	rd, err := s.read("item_features", []string{req.ItemId}, req.Features, 0, false)
	if err != nil {
		return nil, err
	}
	return rd.rowsProto().Entities[0], nil
}

// GetFeatures implements FeatureService.GetFeatures.
func (s *Server) GetFeatures(ctx context.Context, req *recsysv1.GetFeaturesRequest) (*recsysv1.GetFeaturesResponse, error) {
	rd, columns, err := s.readFeatures(req)
	if err != nil {
		return nil, err
	}
	if columns {
		return &recsysv1.GetFeaturesResponse{View: rd.v.Name, Columns: rd.columnsProto()}, nil
	}
	return rd.rowsProto(), nil
}

// readFeatures checks a GetFeatures request and reads it; columns reports
// whether it asks for the columnar answer. REST's features:get calls it
// too, and writes the columns straight from the rows read.
func (s *Server) readFeatures(req *recsysv1.GetFeaturesRequest) (rd featureRead, columns bool, err error) {
	if req.GetView() == "" {
		return rd, false, invalidArg("view", "required (see GET /v1/feature-views)")
	}
	if _, err := s.store.Definitions().View(req.View); err != nil {
		return rd, false, invalidArg("view", "%s", trimPkg(err))
	}
	if columns, err = parseFormat(req.Format); err != nil {
		return rd, false, err
	}
	if err := checkAsOf(req.AsOf); err != nil {
		return rd, false, err
	}
	switch {
	case len(req.Ids) == 0:
		return rd, false, invalidArg("ids", "required: at least one id")
	case len(req.Ids) > s.opts.MaxIDs:
		return rd, false, invalidArg("ids", "%d ids exceed the limit of %d", len(req.Ids), s.opts.MaxIDs)
	}
	for i, id := range req.Ids {
		if checkID("ids", id) != nil { // the field named only on an error
			return rd, false, checkID(fmt.Sprintf("ids[%d]", i), id)
		}
	}
	rd, err = s.read(req.View, req.Ids, req.Features, req.AsOf, columns)
	return rd, columns, err
}

// read reads features names (all when none) of the entities ids of view
// as of asOf; unique refuses a feature named twice (a columnar answer
// has one column per feature).
func (s *Server) read(view string, ids, names []string, asOf int64, unique bool) (featureRead, error) {
	v, err := s.store.Definitions().View(view)
	if err != nil {
		return featureRead{}, toStatus(err)
	}
	idx, err := v.Resolve(names)
	if err != nil {
		return featureRead{}, invalidArg("features", "%s", trimPkg(err))
	}
	if unique {
		seen := make([]bool, len(v.Features))
		for _, i := range idx {
			if seen[i] {
				return featureRead{}, invalidArg("features", "%q is named twice; format columns has one column per feature", v.Features[i].Name)
			}
			seen[i] = true
		}
	}
	rows, err := s.store.Get(v, ids, idx, s.store.At(asOf))
	if err != nil {
		return featureRead{}, toStatus(err)
	}
	return featureRead{v: v, idx: idx, rows: rows}, nil
}

func featureValue(f featurestore.Feature, val *featurestore.Value) *recsysv1.FeatureValue {
	fv := &recsysv1.FeatureValue{Name: f.Name, Status: val.Status.String()}
	if val.Status != featurestore.StatusPresent {
		fv.Value = structpb.NewNullValue()
		if val.EventTS > 0 {
			fv.EventTime = timestamppb.New(msTime(val.EventTS))
		}
		return fv
	}
	switch f.Kind {
	case featurestore.KindFloat:
		fv.Value = structpb.NewNumberValue(val.Float)
	case featurestore.KindInt, featurestore.KindTimestamp:
		fv.Value = structpb.NewNumberValue(float64(val.Int))
	case featurestore.KindString:
		fv.Value = structpb.NewStringValue(val.Str)
	case featurestore.KindStringList:
		list := make([]*structpb.Value, len(val.List))
		for i, s := range val.List {
			list[i] = structpb.NewStringValue(s)
		}
		fv.Value = structpb.NewListValue(&structpb.ListValue{Values: list})
	}
	if val.EventTS > 0 {
		fv.EventTime = timestamppb.New(msTime(val.EventTS))
	}
	return fv
}

// ListFeatureViews implements FeatureService.ListFeatureViews.
func (s *Server) ListFeatureViews(context.Context, *recsysv1.ListFeatureViewsRequest) (*recsysv1.ListFeatureViewsResponse, error) {
	resp := &recsysv1.ListFeatureViewsResponse{}
	for _, v := range s.store.Definitions().Views {
		fv := &recsysv1.FeatureView{Name: v.Name, Entity: v.Entity, IdColumn: v.IDColumn}
		if v.TTL > 0 {
			fv.Ttl = featurestore.FormatDuration(v.TTL)
		}
		for _, f := range v.Features {
			fi := &recsysv1.FeatureInfo{Name: f.Name, Type: f.Kind.String(), Aggregation: f.Agg, Versioned: f.Versioned(), Description: f.Doc}
			if f.Window > 0 {
				fi.Window = featurestore.FormatDuration(time.Duration(f.Window) * time.Millisecond)
			}
			fv.Features = append(fv.Features, fi)
		}
		resp.Views = append(resp.Views, fv)
	}
	return resp, nil
}

// Recommend implements RecommendService.Recommend.
func (s *Server) Recommend(ctx context.Context, req *recsysv1.RecommendRequest) (*recsysv1.RecommendResponse, error) {
	if err := checkID("user_id", req.GetUserId()); err != nil {
		return nil, err
	}
	if req.Category != "" {
		if err := checkID("category", req.Category); err != nil {
			return nil, err
		}
	}
	k, err := s.k(req.K)
	if err != nil {
		return nil, err
	}
	exclude := splitExclude(req.Exclude)
	if len(exclude) > 10_000 {
		return nil, invalidArg("exclude", "%d ids; at most 10000", len(exclude))
	}
	items, err := s.rec.recommend(req.UserId, k, req.Category, exclude, req.ExcludeSeen, req.ExcludePurchased != nil && !*req.ExcludePurchased)
	if err != nil {
		return nil, toStatus(err)
	}
	return &recsysv1.RecommendResponse{Items: items, ModelVersion: s.models.Version()}, nil
}

// PopularItems implements RecommendService.PopularItems.
func (s *Server) PopularItems(ctx context.Context, req *recsysv1.PopularItemsRequest) (*recsysv1.PopularItemsResponse, error) {
	k, err := s.k(req.K)
	if err != nil {
		return nil, err
	}
	if req.Window == "" {
		if req.By != "" || req.AsOf != 0 {
			return nil, invalidArg("window", "required with by and as_of")
		}
		items, err := s.rec.popular(req.Category, k, nil)
		if err != nil {
			return nil, toStatus(err)
		}
		return &recsysv1.PopularItemsResponse{Items: items}, nil
	}
	w, err := featurestore.ParseDuration(req.Window)
	if err != nil || w <= 0 || w%time.Hour != 0 || w > 7*24*time.Hour {
		return nil, invalidArg("window", "%q is not a whole number of hours up to 7d", req.Window)
	}
	weighted, by := true, featurestore.BehaviorView
	if req.By != "" && req.By != "weighted" {
		b, ok := featurestore.ParseBehavior(req.By)
		if !ok {
			return nil, invalidArg("by", "%q is not weighted, view, cart, fav or purchase", req.By)
		}
		weighted, by = false, b
	}
	if err := checkAsOf(req.AsOf); err != nil {
		return nil, err
	}
	rt := s.store.At(req.AsOf)
	top, err := s.store.TopItems(req.Category, rt.AsOf, w.Milliseconds(), k, weighted, by)
	if err != nil {
		return nil, toStatus(err)
	}
	reason := "top in the last " + req.Window
	if req.Category != "" {
		reason += " in category " + req.Category
	}
	items := make([]*recsysv1.ScoredItem, len(top))
	for i, t := range top {
		items[i] = &recsysv1.ScoredItem{ItemId: t.ItemID, Score: t.Score, Reason: reason}
	}
	return &recsysv1.PopularItemsResponse{Items: items}, nil
}

func (s *Server) k(k int32) (int, error) {
	switch {
	case k == 0:
		return 10, nil
	case k < 0 || int(k) > s.opts.MaxK:
		return 0, invalidArg("k", "%d is outside 1 to %d", k, s.opts.MaxK)
	}
	return int(k), nil
}

// GetStats implements AdminService.GetStats.
func (s *Server) GetStats(ctx context.Context, _ *recsysv1.GetStatsRequest) (*recsysv1.GetStatsResponse, error) {
	st := s.store.Stats()
	maxTS, wm := s.upd.Watermark()
	end, applied := int64(s.upd.LogEnd()), int64(st.AppliedOffset)
	if s.opts.Source != nil {
		p := s.opts.Source()
		end, applied, wm = int64(p.End), int64(p.Applied), p.Watermark
	}
	return &recsysv1.GetStatsResponse{
		LogEndOffset:      end,
		AppliedOffset:     applied,
		EventsApplied:     st.Events,
		DuplicatesSkipped: st.Duplicates,
		Users:             st.Users,
		Items:             st.Items,
		MaxEventTs:        max(maxTS, st.MaxTS),
		Watermark:         wm,
		DeadLetters:       s.store.DeadLetterCount(),
	}, nil
}

// ListDeadLetters implements AdminService.ListDeadLetters.
func (s *Server) ListDeadLetters(ctx context.Context, req *recsysv1.ListDeadLettersRequest) (*recsysv1.ListDeadLettersResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > 10_000:
		return nil, invalidArg("limit", "%d is outside 1 to 10000", limit)
	}
	dead, err := decodeDeadLetters(s.store, limit)
	if err != nil {
		return nil, err
	}
	return &recsysv1.ListDeadLettersResponse{DeadLetters: dead, Total: s.store.DeadLetterCount()}, nil
}

func decodeDeadLetters(st *featurestore.Store, limit int) ([]*recsysv1.DeadLetter, error) {
	recs, err := st.DeadLetters(limit)
	if err != nil {
		return nil, toStatus(err)
	}
	out := make([]*recsysv1.DeadLetter, len(recs))
	for i, r := range recs {
		out[i] = new(recsysv1.DeadLetter)
		if err := proto.Unmarshal(r, out[i]); err != nil {
			return nil, toStatus(fmt.Errorf("dead letter: %w", err))
		}
	}
	return out, nil
}

// checkID validates a request id with the ingest rules.
func checkID(field, id string) error {
	if ferr := updater.CheckID(field, id); ferr != nil {
		return invalidArg(field, "%s", ferr.Reason)
	}
	return nil
}

// ready reports whether the store is open and the updater caught up.
func (s *Server) ready() (bool, string) {
	if s.opts.Starting != nil {
		if r := s.opts.Starting(); r != "" {
			return false, r
		}
	}
	if err := s.upd.Failed(); err != nil {
		return false, err.Error()
	}
	if err := s.upd.DiskFull(); err != nil {
		return false, err.Error()
	}
	if s.opts.Source != nil {
		p := s.opts.Source()
		lag := p.End - p.Applied
		if lag > s.opts.MaxReadyLag {
			return false, fmt.Sprintf("consumer is %d records behind the source (limit %d)", lag, s.opts.MaxReadyLag)
		}
		return true, fmt.Sprintf("consumer lag %d records", lag)
	}
	end, applied := s.upd.LogEnd(), s.store.AppliedOffset()
	if end-applied > s.opts.MaxReadyLag {
		return false, fmt.Sprintf("updater is %d events behind the log (limit %d)", end-applied, s.opts.MaxReadyLag)
	}
	return true, fmt.Sprintf("log end %d, applied %d", end, applied)
}
