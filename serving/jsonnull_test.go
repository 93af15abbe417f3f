package serving

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

func TestJSONNonFiniteNumbersAreNull(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want string // the JSON, compared after decoding both
	}{
		{"models", &recsysv1.ListModelsResponse{Models: []*recsysv1.ModelInfo{
			{Name: "NaN", RollingAuc: nan, RollingLogLoss: inf, PublishedAuc: -inf, PublishedLogLoss: 0.25, LastUpdate: timestamppb.New(msTime(baseTS))},
			{Name: "mf", RollingAuc: 0.5}}, ModelVersion: "Infinity"},
			`{"models":[{"name":"NaN","version":"0","examples":"0","rolling_auc":null,"rolling_log_loss":null,"published_auc":null,"published_log_loss":0.25,"last_update":"2023-11-14T22:13:20Z","frozen":false},
			{"name":"mf","version":"0","examples":"0","rolling_auc":0.5,"rolling_log_loss":0,"published_auc":0,"published_log_loss":0,"last_update":null,"frozen":false}],"model_version":"Infinity"}`},
		{"recommendations", &recsysv1.RecommendResponse{Items: []*recsysv1.ScoredItem{{ItemId: "-Infinity", Score: -inf, Reason: "NaN"}, {ItemId: "i2", Score: 1.5}}, ModelVersion: "v"},
			`{"items":[{"item_id":"-Infinity","score":null,"reason":"NaN"},{"item_id":"i2","score":1.5,"reason":""}],"model_version":"v"}`},
		{"similar users", &recsysv1.SimilarUsersResponse{Users: []*recsysv1.ScoredUser{{UserId: "u", Score: nan}}},
			`{"users":[{"user_id":"u","score":null}]}`},
		{"value", &recsysv1.FeatureValue{Name: "x", Value: structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(nan), structpb.NewNumberValue(2)}}), Status: "present"},
			`{"name":"x","value":[null,2],"status":"present","event_time":null}`},
		{"features (fast path)", &recsysv1.GetFeaturesResponse{View: "v", Entities: []*recsysv1.EntityFeatures{{Id: "a", Features: []*recsysv1.FeatureValue{
			{Name: "rate", Value: structpb.NewNumberValue(inf), Status: "present"}}}}},
			`{"view":"v","entities":[{"id":"a","features":[{"name":"rate","value":null,"status":"present","event_time":null}]}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := jsonMarshaler.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatal(err)
			}
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			if string(gb) != string(wb) {
				t.Errorf("got  %s\nwant %s", gb, wb)
			}
		})
	}
	// The message itself is left as it was (Values are nulled in a copy).
	v := &recsysv1.FeatureValue{Value: structpb.NewNumberValue(nan)}
	if _, err := jsonMarshaler.Marshal(v); err != nil || !math.IsNaN(v.Value.GetNumberValue()) {
		t.Errorf("Marshal changed its argument (%v) or failed: %v", v.Value, err)
	}
	// All finite: exactly protojson's output, compacted (protojson puts
	// spaces at random between builds).
	m := &recsysv1.ListModelsResponse{Models: []*recsysv1.ModelInfo{{Name: "ranker", RollingAuc: 0.75}}}
	got, _ := jsonMarshaler.Marshal(m)
	raw, _ := jsonMarshaler.JSONPb.Marshal(m)
	want, _ := compact(raw)
	if string(got) != string(want) {
		t.Errorf("finite message: got %s, want protojson's %s", got, want)
	}
}

func TestRESTModelsWithoutExamplesAreNull(t *testing.T) {
	e := newEnv(t)
	h, err := e.srv.HTTPHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var out struct {
		Models []map[string]any `json:"models"`
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out.Models) == 0 {
		t.Fatalf("GET /v1/models: %s (%v)", body, err)
	}
	for _, m := range out.Models {
		for _, k := range []string{"rolling_auc", "rolling_log_loss", "published_auc", "published_log_loss"} {
			if v, ok := m[k]; !ok || v != nil {
				t.Errorf("model %v: %s = %#v, want null (no examples yet)", m["name"], k, v)
			}
		}
	}
}
