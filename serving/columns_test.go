package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// columnsDefs has a feature of every kind, and rates without a prior, so
// that values can be NaN (0/0) and +Inf (1/0).
const columnsDefs = `
behavior_weights: {view: 1, fav: 2, cart: 3, purchase: 4}
affinity_half_life: 24h
views:
  - name: user_features
    entity: user
    ttl: 7d
    features:
      - {name: view_count, agg: count, behavior: view}
      - {name: first_event_ts, agg: first_event_ts}
      - {name: recent_items, agg: recent_items}
      - {name: view_count_1h, agg: count, behavior: view, window: 1h}
      - {name: purchase_per_view_24h, agg: rate, numerator: purchase, denominator: view, window: 24h, prior_mean: 0, prior_strength: 0}
      - {name: seconds_since_last_event, agg: seconds_since_last_event}
      - {name: top_categories, agg: top_categories, k: 3}
      - {name: distinct_items_24h, agg: distinct, window: 24h}
  - name: item_features
    entity: item
    ttl: 7d
    features:
      - {name: view_count, agg: count, behavior: view}
      - {name: category_id, agg: category_id}
      - {name: cart_per_view_24h, agg: rate, numerator: cart, denominator: view, window: 24h, prior_mean: 0, prior_strength: 0}
      - {name: trend_score, agg: trend, short: 1h, long: 24h}
      - {name: last_event_ts, agg: last_event_ts}
  - name: category_features
    entity: category
    ttl: 7d
    features:
      - {name: top_items_1h, agg: top_items, window: 1h, k: 5, by: weighted}
      - {name: top_items_24h, agg: top_items, window: 24h, k: 5, by: view}
`

// Ids with characters JSON must escape (or may not), and a long one of digits.
var (
	quoteUser = "u\"q\\ü/中😀\u2028<&>"
	quoteCat  = "c/1\"\\"
	digitID   = strings.Repeat("9", 256)
)

// columnsEnv is a server over columnsDefs with entities in every state:
// one past the TTL (old), present ones, an item without category, rates
// of NaN and +Inf; its REST handler and a gRPC client.
type columnsEnv struct {
	*env
	url string
	gc  recsysv1.FeatureServiceClient
	t0  int64 // the old events
	t1  int64 // the newest events: the clock (the event clock)
}

func newColumnsEnv(t *testing.T) *columnsEnv {
	t.Helper()
	defs, err := featurestore.ParseDefinitions("columns.yaml", []byte(columnsDefs))
	if err != nil {
		t.Fatal(err)
	}
	e := &columnsEnv{env: newEnvDefs(t, defs), t0: baseTS, t1: baseTS + 9*24*3600*1000}
	ev := func(u, i, c, b string, ts int64) *recsysv1.Event {
		return &recsysv1.Event{UserId: u, ItemId: i, CategoryId: c, Behavior: b, Ts: ts}
	}
	e.ingest(t, []*recsysv1.Event{
		ev("old", "i-old", "c-old", "view", e.t0),                         // removed by expiry: not found
		ev("stale", "i-stale", "c-old", "view", e.t1-7*24*3600*1000-1000), // past the TTL: expired
		ev(quoteUser, "i1", quoteCat, "view", e.t1-3_600_000),
		ev(quoteUser, "i1", quoteCat, "purchase", e.t1-1000),
		ev(digitID, "i1", quoteCat, "view", e.t1-500),
		ev(digitID, "i2", "", "cart", e.t1-400),    // i2: no category, 1 cart / 0 views = +Inf
		ev(quoteUser, "i3", "c2", "fav", e.t1-300), // i3: 0 carts / 0 views = NaN
		ev("u-views", "i1", quoteCat, "view", e.t1),
	})
	// The updater expires after the batch is applied, and ingest waits for
	// the apply alone: wait for the expiry too, so that every answer the
	// tests compare reads the same state (a rows answer read before the
	// expiry said "old" expired, a columns answer after it not_found).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		v, err := e.store.Pin()
		if err != nil {
			t.Fatal(err)
		}
		_, found, err := v.User("old")
		v.Release()
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(`user "old" is not removed by expiry after 10 s`)
		}
	}
	e.srv.opts.MaxBodyBytes = 1 << 20 // 1,000 ids of 256 bytes
	h, err := e.srv.HTTPHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	e.url = ts.URL + "/v1/features:get"
	gs, _ := e.srv.GRPCServer(codecOption())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.gc = recsysv1.NewFeatureServiceClient(conn)
	return e
}

// post sends a features:get body and returns the status, body and content type.
func (e *columnsEnv) post(t *testing.T, body any) (int, []byte, string) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	resp, err := http.Post(e.url, "application/json", rd)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header.Get("Content-Type")
}

type rowsJSON struct {
	View     string `json:"view"`
	Entities []struct {
		ID       string `json:"id"`
		Features []struct {
			Name      string          `json:"name"`
			Value     json.RawMessage `json:"value"`
			Status    string          `json:"status"`
			EventTime *string         `json:"event_time"`
		} `json:"features"`
	} `json:"entities"`
}

type statusJSON struct {
	IDIndex int     `json:"id_index"`
	Feature *string `json:"feature"`
	Status  string  `json:"status"`
}

type columnsJSON struct {
	View        string                       `json:"view"`
	IDs         []string                     `json:"ids"`
	Features    []string                     `json:"features"`
	Columns     map[string][]json.RawMessage `json:"columns"`
	EventTimeMS map[string][]json.RawMessage `json:"event_time_ms"`
	Status      []statusJSON                 `json:"status"`
}

// wantStatus is the sparse status list the rows answer implies: one
// entry for an entity whose values share a status that is not present,
// else one per value not present.
func wantStatus(rows *rowsJSON) []statusJSON {
	out := []statusJSON{}
	for r, ent := range rows.Entities {
		same := len(ent.Features) > 0
		for _, f := range ent.Features {
			same = same && f.Status == ent.Features[0].Status
		}
		if same {
			if st := ent.Features[0].Status; st != "present" {
				out = append(out, statusJSON{IDIndex: r, Status: st})
			}
			continue
		}
		for _, f := range ent.Features {
			if f.Status != "present" {
				out = append(out, statusJSON{IDIndex: r, Feature: &f.Name, Status: f.Status})
			}
		}
	}
	return out
}

func statusString(s []statusJSON) string {
	var parts []string
	for _, st := range s {
		f := "*"
		if st.Feature != nil {
			f = *st.Feature
		}
		parts = append(parts, fmt.Sprintf("%d/%s/%s", st.IDIndex, f, st.Status))
	}
	return strings.Join(parts, " ")
}

// rowsTime is a rows event_time as the columns write it.
func rowsTime(t *testing.T, ts *string) string {
	t.Helper()
	if ts == nil {
		return "null"
	}
	tm, err := time.Parse(time.RFC3339Nano, *ts)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatInt(tm.UnixMilli(), 10)
}

// compareShapes asks req in the three shapes (REST rows, REST columns,
// gRPC columns) and checks that they hold the same values, statuses and
// times. It returns the rows answer.
func (e *columnsEnv) compareShapes(t *testing.T, req *recsysv1.GetFeaturesRequest) *rowsJSON {
	t.Helper()
	body := map[string]any{"view": req.View, "ids": req.Ids}
	if req.Features != nil {
		body["features"] = req.Features
	}
	if req.AsOf != 0 {
		body["as_of"] = req.AsOf
	}
	code, rawRows, _ := e.post(t, body)
	if code != 200 {
		t.Fatalf("rows: %d %s", code, rawRows)
	}
	body["format"] = "columns"
	code, rawCols, ctype := e.post(t, body)
	if code != 200 || ctype != "application/json" {
		t.Fatalf("columns: %d %s %s", code, ctype, rawCols)
	}
	var rows rowsJSON
	if err := json.Unmarshal(rawRows, &rows); err != nil {
		t.Fatal(err)
	}
	var cols columnsJSON
	dec := json.NewDecoder(bytes.NewReader(rawCols))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cols); err != nil {
		t.Fatalf("columns answer %s: %v", rawCols, err)
	}
	creq := &recsysv1.GetFeaturesRequest{View: req.View, Ids: req.Ids, Features: req.Features, AsOf: req.AsOf, Format: "columns"}
	gresp, err := e.gc.GetFeatures(context.Background(), creq)
	if err != nil {
		t.Fatal(err)
	}
	g := gresp.Columns
	if cols.View != rows.View || gresp.View != rows.View || len(gresp.Entities) != 0 || g == nil {
		t.Fatalf("view %q, gRPC %q with %d entities, want %q and none", cols.View, gresp.View, len(gresp.Entities), rows.View)
	}
	if len(rows.Entities) != len(req.Ids) || !slices.Equal(cols.IDs, req.Ids) || !slices.Equal(g.Ids, req.Ids) {
		t.Fatalf("ids: rows %d entities, columns %q, gRPC %q; want %q", len(rows.Entities), cols.IDs, g.Ids, req.Ids)
	}
	v, err := e.store.Definitions().View(req.View)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range rows.Entities[0].Features {
		names = append(names, f.Name)
	}
	if !slices.Equal(cols.Features, names) || len(cols.Columns) != len(names) || len(cols.EventTimeMS) != len(names) || len(g.Columns) != len(names) {
		t.Fatalf("features: columns %q (%d columns, %d times), gRPC %d columns; rows %q", cols.Features, len(cols.Columns), len(cols.EventTimeMS), len(g.Columns), names)
	}
	// The keys of columns and event_time_ms come in the order of features.
	for _, key := range []string{`"columns":{`, `"event_time_ms":{`} {
		at := bytes.Index(rawCols, []byte(key))
		last := at
		for _, n := range names {
			i := bytes.Index(rawCols[at:], []byte(string(appendString(nil, n))+":["))
			if i < 0 || at+i < last {
				t.Fatalf("%s: key %q missing or out of order in %s", key, n, rawCols)
			}
			last = at + i
		}
	}
	want := wantStatus(&rows)
	if got := statusString(cols.Status); got != statusString(want) {
		t.Errorf("REST status = %s\nwant           %s", got, statusString(want))
	}
	var gst []statusJSON
	for _, s := range g.Status {
		st := statusJSON{IDIndex: int(s.IdIndex), Status: s.Status}
		if s.Feature != "" {
			st.Feature = &s.Feature
		}
		gst = append(gst, st)
	}
	if got := statusString(gst); got != statusString(want) {
		t.Errorf("gRPC status = %s\nwant           %s", got, statusString(want))
	}
	for j, name := range names {
		f := v.Features[slices.IndexFunc(v.Features, func(f featurestore.Feature) bool { return f.Name == name })]
		gc := g.Columns[j]
		if gc.Name != name || gc.Type != f.Kind.String() || len(gc.EventTimeMs) != len(req.Ids) {
			t.Fatalf("gRPC column %d = %s %s with %d times, want %s %s", j, gc.Name, gc.Type, len(gc.EventTimeMs), name, f.Kind)
		}
		vals, times := cols.Columns[name], cols.EventTimeMS[name]
		if len(vals) != len(req.Ids) || len(times) != len(req.Ids) {
			t.Fatalf("column %s: %d values, %d times, want %d", name, len(vals), len(times), len(req.Ids))
		}
		for r, ent := range rows.Entities {
			fv := ent.Features[j]
			where := fmt.Sprintf("%s[%d] (%s, %s)", name, r, ent.ID, fv.Status)
			if string(vals[r]) != string(fv.Value) {
				t.Errorf("%s: columns value %s, rows %s", where, vals[r], fv.Value)
			}
			if wt := rowsTime(t, fv.EventTime); string(times[r]) != wt {
				t.Errorf("%s: columns time %s, rows %s", where, times[r], wt)
			}
			if wt := rowsTime(t, fv.EventTime); (wt == "null" && gc.EventTimeMs[r] != 0) || (wt != "null" && strconv.FormatInt(gc.EventTimeMs[r], 10) != wt) {
				t.Errorf("%s: gRPC time %d, rows %s", where, gc.EventTimeMs[r], wt)
			}
			present := fv.Status == "present"
			var got string
			switch f.Kind {
			case featurestore.KindInt, featurestore.KindTimestamp:
				if len(gc.Int64Values) != len(req.Ids) {
					t.Fatalf("%s: %d int64 values", where, len(gc.Int64Values))
				}
				got = strconv.FormatInt(gc.Int64Values[r], 10)
			case featurestore.KindFloat:
				if len(gc.DoubleValues) != len(req.Ids) {
					t.Fatalf("%s: %d double values", where, len(gc.DoubleValues))
				}
				x := gc.DoubleValues[r]
				got = string(appendNumber(nil, x))
				if present && (math.IsNaN(x) || math.IsInf(x, 0)) && string(fv.Value) != "null" {
					t.Errorf("%s: gRPC %v, rows %s", where, x, fv.Value)
				}
			case featurestore.KindString:
				if len(gc.StringValues) != len(req.Ids) {
					t.Fatalf("%s: %d string values", where, len(gc.StringValues))
				}
				got = string(appendString(nil, gc.StringValues[r]))
			case featurestore.KindStringList:
				if len(gc.ListOffsets) != len(req.Ids)+1 || gc.ListOffsets[0] != 0 || int(gc.ListOffsets[len(req.Ids)]) != len(gc.ListValues) {
					t.Fatalf("%s: offsets %v for %d values", where, gc.ListOffsets, len(gc.ListValues))
				}
				b := []byte{'['}
				for i, s := range gc.ListValues[gc.ListOffsets[r]:gc.ListOffsets[r+1]] {
					if i > 0 {
						b = append(b, ',')
					}
					b = appendString(b, s)
				}
				got = string(append(b, ']'))
			}
			switch {
			case present && got != string(fv.Value) && string(fv.Value) != "null":
				t.Errorf("%s: gRPC value %s, rows %s", where, got, fv.Value)
			case !present && got != "0" && got != `""` && got != "[]":
				t.Errorf("%s: gRPC value %s where not present, want the zero value", where, got)
			}
		}
	}
	return &rows
}

// statusesOf counts the statuses of a rows answer.
func statusesOf(rows *rowsJSON) map[string]int {
	n := map[string]int{}
	for _, ent := range rows.Entities {
		for _, f := range ent.Features {
			n[f.Status]++
		}
	}
	return n
}

// The columns answer holds what the rows answer holds, over REST and
// gRPC, for every kind of feature and every status.
func TestColumnsMatchRows(t *testing.T) {
	e := newColumnsEnv(t)
	users := []string{quoteUser, "old", "stale", "nobody", digitID, quoteUser, "u-views"}
	items := []string{"i1", "i2", "i3", "i-old", "i-stale", "nobody"}
	seen := map[string]int{}
	for _, tc := range []struct {
		name string
		req  *recsysv1.GetFeaturesRequest
	}{
		{"users now", &recsysv1.GetFeaturesRequest{View: "user_features", Ids: users}},
		{"items now", &recsysv1.GetFeaturesRequest{View: "item_features", Ids: items}},
		{"subset in another order", &recsysv1.GetFeaturesRequest{View: "item_features", Ids: items, Features: []string{"last_event_ts", "category_id", "view_count"}}},
		{"one feature", &recsysv1.GetFeaturesRequest{View: "item_features", Ids: []string{"i2"}, Features: []string{"category_id"}}},
		// As of before the users' newest events: features without history
		// are not_versioned, windows are present.
		{"users as of 1 s ago", &recsysv1.GetFeaturesRequest{View: "user_features", Ids: users, AsOf: e.t1 - 1000}},
		{"items as of 1 s ago", &recsysv1.GetFeaturesRequest{View: "item_features", Ids: items, AsOf: e.t1 - 1000}},
		{"features without history as of 1 s ago", &recsysv1.GetFeaturesRequest{View: "item_features", Ids: items, AsOf: e.t1 - 1000, Features: []string{"view_count", "category_id"}}},
		// As of the old events: windows reach past the TTL (expired).
		{"users as of the old events", &recsysv1.GetFeaturesRequest{View: "user_features", Ids: users, AsOf: e.t0}},
		{"categories", &recsysv1.GetFeaturesRequest{View: "category_features", Ids: []string{quoteCat, "c2", "nocat", "c-old"}}},
		{"categories as of the old events", &recsysv1.GetFeaturesRequest{View: "category_features", Ids: []string{quoteCat, "c-old"}, AsOf: e.t0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows := e.compareShapes(t, tc.req)
			for st, n := range statusesOf(rows) {
				seen[st] += n
			}
			for _, st := range wantStatus(rows) {
				kind := "value"
				if st.Feature == nil {
					kind = "entity"
				}
				seen[kind+" "+st.Status]++
			}
		})
	}
	for _, st := range []string{"present", "entity not_found", "entity expired", "entity not_versioned", "value not_found", "value expired", "value not_versioned"} {
		if seen[st] == 0 {
			t.Errorf("no value with status %s was compared (%v)", st, seen)
		}
	}
	// The non-finite rates: null over REST in both shapes (present), NaN
	// and +Inf over gRPC.
	resp, err := e.gc.GetFeatures(context.Background(), &recsysv1.GetFeaturesRequest{View: "item_features", Ids: []string{"i2", "i3", "i1"}, Features: []string{"cart_per_view_24h"}, Format: "columns"})
	if err != nil {
		t.Fatal(err)
	}
	if d := resp.Columns.Columns[0].DoubleValues; !math.IsInf(d[0], 1) || !math.IsNaN(d[1]) || d[2] != 0 || len(resp.Columns.Status) != 0 {
		t.Errorf("cart_per_view_24h = %v with statuses %v, want [+Inf NaN 0], all present", d, resp.Columns.Status)
	}
}

// An answer with every value present has an empty status list; a read of
// 1,000 long ids (the limit) works in both shapes.
func TestColumnsLargeAndAllPresent(t *testing.T) {
	e := newColumnsEnv(t)
	code, b, _ := e.post(t, map[string]any{"view": "item_features", "ids": []string{"i1"}, "features": []string{"view_count"}, "format": "columns"})
	want := `{"view":"item_features","ids":["i1"],"features":["view_count"],"columns":{"view_count":[3]},"event_time_ms":{"view_count":[` +
		strconv.FormatInt(e.t1, 10) + `]},"status":[]}`
	if code != 200 || string(b) != want {
		t.Fatalf("got %d %s\nwant %s", code, b, want)
	}
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%0256d", i)
	}
	ids[500] = digitID
	rows := e.compareShapes(t, &recsysv1.GetFeaturesRequest{View: "user_features", Ids: ids})
	if n := statusesOf(rows); n["not_found"] != 999*8 || n["present"] != 8 {
		t.Errorf("statuses %v, want one user present", n)
	}
}

// Without format (or with "rows") the answer is the rows shape, byte for
// byte what the gateway wrote before the columns existed.
func TestRowsShapeUnchanged(t *testing.T) {
	e := newColumnsEnv(t)
	body := `{"view":"item_features","ids":["i2","nobody"],"features":["view_count","category_id","cart_per_view_24h","last_event_ts"]}`
	want := `{"view":"item_features","entities":[{"id":"i2","features":[` +
		`{"name":"view_count","value":0,"status":"present","event_time":null},` +
		`{"name":"category_id","value":null,"status":"not_found","event_time":null},` +
		`{"name":"cart_per_view_24h","value":null,"status":"present","event_time":"2023-11-23T22:13:19.600Z"},` +
		`{"name":"last_event_ts","value":1700777599600,"status":"present","event_time":"2023-11-23T22:13:19.600Z"}]},` +
		`{"id":"nobody","features":[` +
		`{"name":"view_count","value":null,"status":"not_found","event_time":null},` +
		`{"name":"category_id","value":null,"status":"not_found","event_time":null},` +
		`{"name":"cart_per_view_24h","value":null,"status":"not_found","event_time":null},` +
		`{"name":"last_event_ts","value":null,"status":"not_found","event_time":null}]}]}`
	for _, b := range []string{body, strings.Replace(body, `{"view"`, `{"format":"rows","view"`, 1), strings.Replace(body, `{"view"`, `{"format":"","view"`, 1)} {
		code, got, ctype := e.post(t, b)
		if code != 200 || string(got) != want || ctype != "application/json" {
			t.Errorf("%s:\ngot  %d %s %s\nwant %s", b, code, ctype, got, want)
		}
	}
	code, got, _ := e.post(t, strings.Replace(body, `{"view"`, `{"format":"columns","view"`, 1))
	wantCols := `{"view":"item_features","ids":["i2","nobody"],"features":["view_count","category_id","cart_per_view_24h","last_event_ts"],` +
		`"columns":{"view_count":[0,null],"category_id":[null,null],"cart_per_view_24h":[null,null],"last_event_ts":[1700777599600,null]},` +
		`"event_time_ms":{"view_count":[null,null],"category_id":[null,null],"cart_per_view_24h":[1700777599600,null],"last_event_ts":[1700777599600,null]},` +
		`"status":[{"id_index":0,"feature":"category_id","status":"not_found"},{"id_index":1,"status":"not_found"}]}`
	if code != 200 || string(got) != wantCols {
		t.Errorf("columns:\ngot  %d %s\nwant %s", code, got, wantCols)
	}
}

// Bad requests name the field and the reason, in both shapes and both
// protocols.
func TestFeaturesFormatErrors(t *testing.T) {
	e := newColumnsEnv(t)
	for _, tc := range []struct {
		body  string
		field string // the message starts with it
		frag  string
	}{
		{`{"view":"item_features","ids":["i1"],"format":"xml"}`, "format", `"xml" is not rows or columns (empty: rows)`},
		{`{"view":"item_features","ids":["i1"],"format":"COLUMNS"}`, "format", "not rows or columns"},
		{`{"view":"item_features","ids":["i1"],"format":" columns"}`, "format", "not rows or columns"},
		{`{"view":"item_features","ids":["i1"],"format":"` + strings.Repeat("x", 5000) + `"}`, "format", "…\" is not rows"},
		{`{"view":"item_features","ids":["i1"],"format":1}`, "", "format"},
		{`{"view":"item_features","ids":["i1"],"format":null,"x":1}`, "", "unknown field"},
		{`{"view":"item_features","ids":["i1"],"format":"columns","features":["view_count","view_count"]}`, "features", `"view_count" is named twice`},
		{`{"view":"item_features","ids":["i1"],"format":"columns","features":["nope"]}`, "features", `unknown feature "nope"`},
		{`{"view":"item_features","ids":[],"format":"columns"}`, "ids", "required"},
		{`{"view":"item_features","format":"columns"}`, "ids", "required"},
		{`{"view":"item_features","ids":["i1",""],"format":"columns"}`, "ids[1]", "required"},
		{`{"view":"nope","ids":["i1"],"format":"columns"}`, "view", `unknown view "nope"`},
		{`{"ids":["i1"],"format":"columns"}`, "view", "required"},
		{`{"view":"item_features","ids":["i1"],"format":"columns","as_of":-1}`, "as_of", "negative"},
		{`{"view":"item_features","ids":["i1"],"format":"columns","as_of":1700000000}`, "as_of", "Unix seconds?"},
		{`{"view":"item_features","ids":["i1"],"format":"columns"`, "", "unexpected EOF"},
		{``, "view", "required"},
	} {
		code, b, _ := e.post(t, tc.body)
		var out struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(b, &out)
		if code != 400 || out.Code != int(codes.InvalidArgument) || !strings.HasPrefix(out.Message, tc.field) || !strings.Contains(out.Message, tc.frag) {
			t.Errorf("%.80s: %d %s, want 400 naming %q with %q", tc.body, code, b, tc.field, tc.frag)
		}
	}
	// Rows keep answering a feature named twice, as before.
	if code, b, _ := e.post(t, `{"view":"item_features","ids":["i1"],"features":["view_count","view_count"]}`); code != 200 {
		t.Errorf("rows with a feature twice: %d %s", code, b)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		req   *recsysv1.GetFeaturesRequest
		field string
	}{
		{&recsysv1.GetFeaturesRequest{View: "item_features", Ids: []string{"i1"}, Format: "column"}, "format"},
		{&recsysv1.GetFeaturesRequest{View: "item_features", Ids: []string{"i1"}, Format: "columns", Features: []string{"view_count", "category_id", "view_count"}}, "features"},
		{&recsysv1.GetFeaturesRequest{View: "item_features", Format: "columns"}, "ids"},
	} {
		_, err := e.gc.GetFeatures(ctx, tc.req)
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.field+": ") || violationField(st) != tc.field {
			t.Errorf("%v: %v, want INVALID_ARGUMENT naming %s", tc.req, err, tc.field)
		}
	}
}

func violationField(st *status.Status) string {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			return br.FieldViolations[0].Field
		}
	}
	return ""
}

// benchRead is a read of 500 items of every default item feature, with
// values like a live store's: counts, rates, times, a category, some
// items unknown.
func benchRead() *featureRead {
	v := featurestore.ItemView
	idx, _ := v.Resolve(nil)
	ids := make([]string, 500)
	for i := range ids {
		ids[i] = strconv.Itoa(1_000_000 + i*7919)
	}
	rows := make([]featurestore.Row, len(ids))
	for r := range rows {
		rows[r] = featurestore.Row{ID: ids[r], Found: r%10 != 0, Values: make([]featurestore.Value, len(idx))}
		if !rows[r].Found {
			continue
		}
		for j, i := range idx {
			val := featurestore.Value{Status: featurestore.StatusPresent, EventTS: baseTS + int64(r*1000+j)}
			switch v.Features[i].Kind {
			case featurestore.KindInt:
				val.Int = int64((r * j) % 40)
			case featurestore.KindTimestamp:
				val.Int = baseTS + int64(r)
			case featurestore.KindFloat:
				val.Float = float64(r%17) / 13
			case featurestore.KindString:
				val.Str = strconv.Itoa(r % 300)
			case featurestore.KindStringList:
				val.List = []string{"a", "b"}
			}
			rows[r].Values[j] = val
		}
	}
	return &featureRead{v: v, idx: idx, rows: rows}
}

// The encoding alone, from the store's rows to the bytes sent.
func BenchmarkFeaturesAnswer(b *testing.B) {
	rd := benchRead()
	for _, bc := range []struct {
		name string
		enc  func() []byte
	}{
		{"REST rows", func() []byte { out, _ := jsonMarshaler.Marshal(rd.rowsProto()); return out }},
		{"REST columns", func() []byte { return appendColumns(make([]byte, 0, 256+len(rd.rows)*(32+len(rd.idx)*24)), rd) }},
		{"gRPC rows", func() []byte { out, _ := proto.Marshal(rd.rowsProto()); return out }},
		{"gRPC columns", func() []byte {
			out, _ := proto.Marshal(&recsysv1.GetFeaturesResponse{View: rd.v.Name, Columns: rd.columnsProto()})
			return out
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				n = len(bc.enc())
			}
			b.ReportMetric(float64(n)/float64(len(rd.rows)), "B/entity")
		})
	}
}
