package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/eventlog"
)

// env is a store, log and running updater on an in-memory filesystem.
type env struct {
	store  *featurestore.Store
	models *models.Models
	upd    *updater.Updater
	srv    *Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvDefs(t, nil)
}

// newEnvDefs is newEnv with the views defs (nil: the default ones).
func newEnvDefs(t *testing.T, defs *featurestore.Definitions) *env {
	t.Helper()
	fs := vfs.NewMem()
	lg, err := eventlog.Open("log", eventlog.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := featurestore.Open("state", featurestore.Options{FS: fs, Clock: "event", Learner: m, Definitions: defs})
	if err != nil {
		t.Fatal(err)
	}
	upd := updater.New(lg, st, updater.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- upd.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("updater: %v", err)
		}
		_ = lg.Close()
		_ = st.Close()
	})
	return &env{store: st, models: m, upd: upd, srv: New(st, m, upd, Options{MaxBatch: 100, MaxBodyBytes: 1 << 16})}
}

const baseTS = int64(1_700_000_000_000)

// ingest makes n users u0..u(n-1) each view item i<k%7> and applies them.
func (e *env) ingest(t *testing.T, evs []*recsysv1.Event) {
	t.Helper()
	ctx := context.Background()
	for len(evs) > 0 {
		n := min(len(evs), 100)
		res, err := e.upd.Ingest(ctx, evs[:n], nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Rejected) > 0 {
			t.Fatalf("rejected: %v", res.Rejected)
		}
		if err := e.upd.WaitApplied(ctx, res.End); err != nil {
			t.Fatal(err)
		}
		evs = evs[n:]
	}
}

func userViews(n int) []*recsysv1.Event {
	evs := make([]*recsysv1.Event, n)
	for i := range evs {
		evs[i] = &recsysv1.Event{UserId: fmt.Sprintf("u%05d", i), ItemId: fmt.Sprintf("i%d", i%7), CategoryId: "c1", Behavior: "view", Ts: baseTS + int64(i)}
	}
	return evs
}

func startFlight(t *testing.T, e *env, mem memory.Allocator, batchRows int) flight.Client {
	t.Helper()
	fsrv := NewFlightServer(e.store, e.models, mem)
	fsrv.batchRows = batchRows
	gs := fsrv.GRPCServer()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	c, err := flight.NewClientWithMiddleware(l.Addr().String(), nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestFlightScanMatchesStore(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(1000))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 300)
	ctx := context.Background()

	infos, err := c.ListFlights(ctx, &flight.Criteria{})
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]int64{}
	for {
		info, err := infos.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rows[info.FlightDescriptor.Path[0]] = info.TotalRecords
	}
	if rows["user_features"] != 1000 || rows["item_features"] != 7 {
		t.Fatalf("ListFlights row counts = %v, want user_features 1000, item_features 7", rows)
	}

	info, err := c.GetFlightInfo(ctx, &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"user_features"}})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.DoGet(ctx, info.Endpoint[0].Ticket)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := flight.NewRecordReader(stream)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Release()
	batches, n := 0, 0
	for rd.Next() {
		rec := rd.Record()
		batches++
		ids := rec.Column(0).(*array.String)
		views := rec.Column(1).(*array.Int64)
		recent := rec.Column(7).(*array.List)
		for i := 0; i < int(rec.NumRows()); i++ {
			want := fmt.Sprintf("u%05d", n)
			if ids.Value(i) != want || views.Value(i) != 1 {
				t.Fatalf("row %d = %s view_count %d, want %s 1", n, ids.Value(i), views.Value(i), want)
			}
			start, end := recent.ValueOffsets(i)
			if end-start != 1 {
				t.Fatalf("row %d recent_items has %d values, want 1", n, end-start)
			}
			n++
		}
	}
	if err := rd.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 1000 || batches != 4 {
		t.Fatalf("got %d rows in %d batches, want 1000 in 4", n, batches)
	}
	rd.Release()
	mem.AssertSize(t, 0)
}

func TestFlightIDsAndColumns(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(10))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 64<<10)
	ctx := context.Background()
	cmd, _ := json.Marshal(map[string]any{"view": "user_features", "columns": []string{"user_id", "view_count", "last_event_ts"}, "ids": []string{"u00003", "nobody"}})
	info, err := c.GetFlightInfo(ctx, &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: cmd})
	if err != nil {
		t.Fatal(err)
	}
	schema, err := flight.DeserializeSchema(info.Schema, mem)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(schemaNames(schema)); got != "[user_id view_count last_event_ts]" {
		t.Fatalf("schema columns = %s", got)
	}
	stream, err := c.DoGet(ctx, info.Endpoint[0].Ticket)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := flight.NewRecordReader(stream)
	if err != nil {
		t.Fatal(err)
	}
	if !rd.Next() {
		t.Fatalf("no batch: %v", rd.Err())
	}
	rec := rd.Record()
	if rec.NumRows() != 2 {
		t.Fatalf("rows = %d, want 2", rec.NumRows())
	}
	views := rec.Column(1).(*array.Int64)
	ts := rec.Column(2).(*array.Timestamp)
	if views.Value(0) != 1 || ts.Value(0) != arrow.Timestamp(baseTS+3) || !views.IsNull(1) || !ts.IsNull(1) {
		t.Fatalf("values = %v %v, want [1 null] [%d null]", views, ts, baseTS+3)
	}
	// Read the stream to its end, so the server (which shares mem) has
	// released what it wrote before the allocator is checked.
	if rd.Next() {
		t.Fatalf("a second batch of %d rows, want one", rd.Record().NumRows())
	}
	if err := rd.Err(); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	rd.Release()
	mem.AssertSize(t, 0)
}

func schemaNames(s *arrow.Schema) []string {
	var names []string
	for _, f := range s.Fields() {
		names = append(names, f.Name)
	}
	return names
}

func TestFlightErrors(t *testing.T) {
	e := newEnv(t)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 100)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		desc *flight.FlightDescriptor
		code codes.Code
		msg  string
	}{
		{"unknown view", &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"nope"}}, codes.NotFound, `view "nope" not found`},
		{"two path parts", &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"a", "b"}}, codes.InvalidArgument, "descriptor.path"},
		{"bad json", &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte("{")}, codes.InvalidArgument, "descriptor.cmd"},
		{"unknown key", &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(`{"view":"user_features","x":1}`)}, codes.InvalidArgument, "unknown field"},
		{"unknown column", &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(`{"view":"user_features","columns":["zz"]}`)}, codes.InvalidArgument, `columns: unknown feature "zz"`},
		{"no view", &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(`{}`)}, codes.InvalidArgument, "view: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.GetFlightInfo(ctx, tc.desc)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %s containing %q", err, tc.code, tc.msg)
			}
		})
	}
	stream, err := c.DoGet(ctx, &flight.Ticket{Ticket: []byte("garbage")})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ticket") {
		t.Fatalf("garbage ticket: err = %v, want InvalidArgument naming the ticket", err)
	}
	mem.AssertSize(t, 0)
}

// A client that goes away mid-stream must not leak Arrow memory.
func TestFlightClientCancelsMidStream(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(2000))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 10)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.DoGet(ctx, &flight.Ticket{Ticket: []byte(`{"view":"user_features"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	// The server notices the cancellation at its next batch; wait for every
	// buffer to be released.
	deadline := time.Now().Add(10 * time.Second)
	for mem.CurrentAlloc() != 0 && time.Now().Before(deadline) {
		runtimeYield()
	}
	mem.AssertSize(t, 0)
}

func runtimeYield() { time.Sleep(10 * time.Millisecond) }

func TestRESTIngestAndRead(t *testing.T) {
	e := newEnv(t)
	h, err := e.srv.HTTPHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	defer ts.Close()
	post := func(path, body string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Post(ts.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, out
	}
	code, out := post("/v1/events", `{"events":[
		{"user_id":"u1","item_id":"i1","category_id":"c1","behavior":"pv","ts":"2023-11-14T22:13:20Z"},
		{"user_id":"u1","item_id":"i2","behavior":"click","ts":1700000000000},
		{"user_id":"u1","item_id":"i2","behavior":"buy","ts":1700000001000}]}`)
	if code != 200 || out["accepted"] != float64(2) {
		t.Fatalf("ingest = %d %v, want 200 with 2 accepted", code, out)
	}
	rej := out["rejected"].([]any)
	if len(rej) != 1 || rej[0].(map[string]any)["index"] != float64(1) || rej[0].(map[string]any)["field"] != "behavior" {
		t.Fatalf("rejected = %v, want index 1 field behavior", rej)
	}
	if err := e.upd.WaitApplied(context.Background(), e.upd.LogEnd()); err != nil {
		t.Fatal(err)
	}
	code, out = post("/v1/features:get", `{"view":"user_features","ids":["u1","u2"],"features":["view_count","purchase_count"]}`)
	if code != 200 {
		t.Fatalf("features:get = %d %v", code, out)
	}
	got, _ := json.Marshal(out["entities"])
	want := `[{"features":[{"event_time":"2023-11-14T22:13:20Z","name":"view_count","status":"present","value":1},` +
		`{"event_time":"2023-11-14T22:13:21Z","name":"purchase_count","status":"present","value":1}],"id":"u1"},` +
		`{"features":[{"event_time":null,"name":"view_count","status":"not_found","value":null},` +
		`{"event_time":null,"name":"purchase_count","status":"not_found","value":null}],"id":"u2"}]`
	if string(got) != want {
		t.Fatalf("entities =\n%s\nwant\n%s", got, want)
	}

	for _, tc := range []struct{ body, field string }{
		{`{"events":[`, "body: invalid JSON"},
		{`{"evts":[]}`, "unknown field"},
		{`{"events":[{"user_id":"u","item_id":"i","behavior":"view","ts":"abc"}]}`, "events[0].ts"},
		{`{"events":[{"user_id":"","item_id":"i","behavior":"view","ts":1700000000000}]}`, "events[0].user_id: required"},
		{`{"events":[` + strings.Repeat(`{"user_id":"u","item_id":"i","behavior":"view","ts":1700000000000},`, 100) + `{}]}`, "events: batch of 101 events exceeds the limit of 100"},
		{`{"events":[{"user_id":"` + strings.Repeat("x", 1<<16) + `"}]}`, "body: exceeds the limit of 65536 bytes"},
	} {
		code, out := post("/v1/events", tc.body)
		msg, _ := out["message"].(string)
		if code != 400 || out["code"] != float64(codes.InvalidArgument) || !strings.Contains(msg, tc.field) {
			t.Errorf("body %.40q: %d %v, want 400 naming %q", tc.body, code, out, tc.field)
		}
	}
	resp, err := http.Get(ts.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(spec, []byte(`"/v1/features:get"`)) {
		t.Fatalf("openapi.json lacks /v1/features:get")
	}
}

func TestRecommendExcludesPurchasesAndNeverEmpty(t *testing.T) {
	e := newEnv(t)
	var evs []*recsysv1.Event
	for i := range 30 {
		evs = append(evs, &recsysv1.Event{UserId: fmt.Sprintf("v%d", i), ItemId: fmt.Sprintf("i%d", i%5), CategoryId: fmt.Sprintf("c%d", i%5%2), Behavior: "view", Ts: baseTS + int64(i)})
	}
	evs = append(evs, &recsysv1.Event{UserId: "buyer", ItemId: "i0", CategoryId: "c0", Behavior: "purchase", Ts: baseTS + 100})
	e.ingest(t, evs)
	ctx := context.Background()
	resp, err := e.srv.Recommend(ctx, &recsysv1.RecommendRequest{UserId: "buyer", K: 10, Exclude: []string{"i2"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, it := range resp.Items {
		got[it.ItemId] = it.Reason
	}
	if _, ok := got["i0"]; ok {
		t.Fatalf("recommended the purchased item i0: %v", got)
	}
	if _, ok := got["i2"]; ok {
		t.Fatalf("recommended the excluded item i2: %v", got)
	}
	if len(got) != 3 || !strings.Contains(got["i4"], "category c0") {
		t.Fatalf("items = %v, want i1, i3, i4 with i4 popular in category c0", got)
	}
	resp, err = e.srv.Recommend(ctx, &recsysv1.RecommendRequest{UserId: "stranger", K: 2})
	if err != nil || len(resp.Items) != 2 {
		t.Fatalf("cold-start user: %v %v, want 2 popular items", resp, err)
	}
	resp, err = e.srv.Recommend(ctx, &recsysv1.RecommendRequest{UserId: "stranger", K: 10, Category: "c1"})
	if err != nil || len(resp.Items) != 2 || resp.Items[0].Reason != "popular in category c1" {
		t.Fatalf("category c1: %v %v, want i1 and i3", resp, err)
	}
	if _, err := e.srv.Recommend(ctx, &recsysv1.RecommendRequest{UserId: "x", K: 5000}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("k=5000: err = %v, want InvalidArgument", err)
	}
}

// GetUserHistory lists the user's distinct items newest first, each with
// its strongest behavior, newest time, events and the item's category.
func TestUserHistory(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, []*recsysv1.Event{
		{UserId: "h", ItemId: "i1", CategoryId: "c1", Behavior: "view", Ts: baseTS},
		{UserId: "h", ItemId: "i2", CategoryId: "c2", Behavior: "view", Ts: baseTS + 1000},
		{UserId: "h", ItemId: "i1", CategoryId: "c1", Behavior: "cart", Ts: baseTS + 2000},
		{UserId: "h", ItemId: "i3", Behavior: "fav", Ts: baseTS + 3000},
		{UserId: "other", ItemId: "i9", CategoryId: "c9", Behavior: "view", Ts: baseTS + 4000},
	})
	ctx := context.Background()
	resp, err := e.srv.GetUserHistory(ctx, &recsysv1.GetUserHistoryRequest{UserId: "h"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range resp.Items {
		got = append(got, fmt.Sprintf("%s/%s/%s/%d/%d", it.ItemId, it.CategoryId, it.Behavior, it.EventTime.AsTime().UnixMilli()-baseTS, it.Events))
	}
	want := []string{"i3//fav/3000/1", "i1/c1/cart/2000/2", "i2/c2/view/1000/1"}
	if !slices.Equal(got, want) {
		t.Fatalf("history = %v, want %v", got, want)
	}
	resp, err = e.srv.GetUserHistory(ctx, &recsysv1.GetUserHistoryRequest{UserId: "h", Limit: 1})
	if err != nil || len(resp.Items) != 1 || resp.Items[0].ItemId != "i3" {
		t.Fatalf("limit 1: %v %v, want i3 alone", resp, err)
	}
	resp, err = e.srv.GetUserHistory(ctx, &recsysv1.GetUserHistoryRequest{UserId: "nobody"})
	if err != nil || len(resp.Items) != 0 {
		t.Fatalf("unknown user: %v %v, want an empty history", resp, err)
	}
	for _, req := range []*recsysv1.GetUserHistoryRequest{{UserId: "h", Limit: -1}, {UserId: "h", Limit: 1001}, {UserId: ""}, {UserId: ".."}} {
		if _, err := e.srv.GetUserHistory(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: err = %v, want InvalidArgument", req, err)
		}
	}
}

// grpcurl needs server reflection: every recsys.v1 service is listed.
func TestGRPCReflectionAndHealth(t *testing.T) {
	e := newEnv(t)
	gs, _ := e.srv.GRPCServer()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	slices.Sort(names)
	want := []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
		"recsys.v1.AdminService", "recsys.v1.EventService", "recsys.v1.FeatureService", "recsys.v1.RecommendService"}
	if !slices.Equal(names, want) {
		t.Fatalf("services = %v, want %v", names, want)
	}
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", h, err)
	}
}

// A point-in-time join through DoExchange returns the spine with features
// as of each row, and leaks no Arrow memory.
func TestDoExchangePointInTime(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(3)) // u00000..u00002 view at baseTS+0..2
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 100)
	stream, err := c.DoExchange(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	spineSchema := arrow.NewSchema([]arrow.Field{{Name: "user_id", Type: arrow.BinaryTypes.String}, {Name: "ts", Type: arrow.PrimitiveTypes.Int64}}, nil)
	b := array.NewRecordBuilder(mem, spineSchema)
	b.Field(0).(*array.StringBuilder).AppendValues([]string{"u00001", "u00001", "nobody"}, nil)
	b.Field(1).(*array.Int64Builder).AppendValues([]int64{baseTS, baseTS + 1, baseTS + 1}, nil)
	spine := b.NewRecord()
	b.Release()
	w := flight.NewRecordWriter(stream, ipc.WithSchema(spineSchema), ipc.WithAllocator(mem))
	w.SetFlightDescriptor(&flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(`{"op":"point_in_time","views":["user_features"],"features":["view_count_1h"]}`)})
	if err := w.Write(spine); err != nil {
		t.Fatal(err)
	}
	spine.Release()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	rd, err := flight.NewRecordReader(stream, ipc.WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	if !rd.Next() {
		t.Fatalf("no result: %v", rd.Err())
	}
	rec := rd.Record()
	got := rec.Column(2).(*array.Int64)
	// u00001 viewed at baseTS+1: not yet as of baseTS, counted as of baseTS+1.
	if rec.NumCols() != 3 || got.Value(0) != 0 || got.Value(1) != 1 || !got.IsNull(2) {
		t.Fatalf("joined = %v, want view_count_1h [0 1 null]", rec)
	}
	// Read to the end of the stream: the server's handler (which releases
	// its buffers to the same allocator) has returned once the client sees
	// the end, so the leak check below does not race with it.
	if rd.Next() {
		t.Fatalf("a second batch: %v", rd.Record())
	}
	if err := rd.Err(); err != nil {
		t.Fatal(err)
	}
	rd.Release()
	mem.AssertSize(t, 0)
}

// A full scan split into partitions: disjoint id ranges covering every row
// once, each ticket readable on its own.
func TestFlightPartitions(t *testing.T) {
	e := newEnv(t)
	e.ingest(t, userViews(1000))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	c := startFlight(t, e, mem, 128)
	ctx := context.Background()
	info, err := c.GetFlightInfo(ctx, &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(`{"view":"user_features","columns":["view_count"],"partitions":4}`)})
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Endpoint) != 4 {
		t.Fatalf("%d endpoints, want 4", len(info.Endpoint))
	}
	seen := map[string]int{}
	for _, ep := range info.Endpoint {
		stream, err := c.DoGet(ctx, ep.Ticket)
		if err != nil {
			t.Fatal(err)
		}
		rd, err := flight.NewRecordReader(stream)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rd.Next() {
			ids := rd.Record().Column(0).(*array.String)
			for i := 0; i < ids.Len(); i++ {
				seen[ids.Value(i)]++
				n++
			}
		}
		if err := rd.Err(); err != nil {
			t.Fatal(err)
		}
		rd.Release()
		if n < 200 || n > 300 {
			t.Errorf("partition of %d rows, want about 250", n)
		}
	}
	if len(seen) != 1000 {
		t.Fatalf("partitions cover %d distinct ids, want 1000", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("id %s read %d times", id, n)
		}
	}
	mem.AssertSize(t, 0)
	if _, err := c.GetFlightInfo(ctx, &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(`{"view":"user_features","partitions":99}`)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("partitions 99: %v, want InvalidArgument", err)
	}
}
