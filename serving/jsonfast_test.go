package serving

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

var protoJSON = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

func randString(r *rand.Rand) string {
	alphabet := []rune{'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\x01', '\x1f', '<', '&', 'é', '中', '😀', '\u2028'}
	rs := make([]rune, r.IntN(12))
	for i := range rs {
		rs[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(rs)
}

func randValue(r *rand.Rand, depth int) *structpb.Value {
	switch r.IntN(5) {
	case 0:
		return structpb.NewNullValue()
	case 1:
		nums := []float64{0, 1, -1, 23, 1795787366233, 0.5, 1e-7, 1e21, 123456789012345678, -3.25e-3}
		return structpb.NewNumberValue(nums[r.IntN(len(nums))])
	case 2:
		return structpb.NewStringValue(randString(r))
	case 3:
		return structpb.NewBoolValue(r.IntN(2) == 0)
	}
	var list []*structpb.Value
	if depth < 2 {
		for range r.IntN(4) {
			list = append(list, randValue(r, depth+1))
		}
	}
	return structpb.NewListValue(&structpb.ListValue{Values: list})
}

func randTimestamp(r *rand.Rand) *timestamppb.Timestamp {
	if r.IntN(4) == 0 {
		return nil
	}
	nanos := []int32{0, 932_000_000, 1_000_000, 120_000, 5, 999_999_999}
	return &timestamppb.Timestamp{Seconds: r.Int64N(4_000_000_000), Nanos: nanos[r.IntN(len(nanos))]}
}

// The hand-written encoder must produce the same JSON as protojson.
func TestFastJSONMatchesProtojson(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		resp := &recsysv1.GetFeaturesResponse{View: randString(r)}
		for range r.IntN(3) {
			ent := &recsysv1.EntityFeatures{Id: randString(r)}
			for range r.IntN(4) {
				ent.Features = append(ent.Features, &recsysv1.FeatureValue{
					Name: randString(r), Value: randValue(r, 0), Status: randString(r), EventTime: randTimestamp(r),
				})
			}
			resp.Entities = append(resp.Entities, ent)
		}
		var msgs []any = []any{resp}
		if len(resp.Entities) > 0 {
			msgs = append(msgs, resp.Entities[0])
		}
		for _, m := range msgs {
			fast, err := jsonMarshaler.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var ref []byte
			switch m := m.(type) {
			case *recsysv1.GetFeaturesResponse:
				ref, err = protoJSON.Marshal(m)
			case *recsysv1.EntityFeatures:
				ref, err = protoJSON.Marshal(m)
			}
			if err != nil {
				t.Fatal(err)
			}
			var a, b any
			if err := json.Unmarshal(fast, &a); err != nil {
				t.Fatalf("case %d: fast output is not JSON: %v\n%s", i, err, fast)
			}
			if err := json.Unmarshal(ref, &b); err != nil {
				t.Fatal(err)
			}
			// The rows answer has no columns (a columns answer is REST's own, appendColumns).
			if m, ok := b.(map[string]any); ok && m["columns"] == nil {
				delete(m, "columns")
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("case %d differs:\nfast      %s\nprotojson %s", i, fast, ref)
			}
		}
	}
}

func BenchmarkFeaturesJSON(b *testing.B) {
	resp := &recsysv1.GetFeaturesResponse{View: "user_features"}
	for i := range 500 {
		ent := &recsysv1.EntityFeatures{Id: "u" + string(rune('a'+i%26))}
		for j := range 8 {
			ent.Features = append(ent.Features, &recsysv1.FeatureValue{Name: "view_count", Value: structpb.NewNumberValue(float64(j * 1000)), Status: "present", EventTime: timestamppb.Now()})
		}
		resp.Entities = append(resp.Entities, ent)
	}
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = jsonMarshaler.Marshal(resp)
		}
	})
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = protoJSON.Marshal(resp)
		}
	})
}

// protojson puts spaces after some separators at random between builds;
// REST answers are compact, the same bytes from every build.
func TestRESTAnswersAreCompact(t *testing.T) {
	resp := &recsysv1.IngestResponse{Accepted: 1, Rejected: []*recsysv1.Rejection{{Index: 2, Field: "ts", Code: "late", Reason: "a reason, with spaces: kept"}}}
	b, err := jsonMarshaler.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"accepted":1,"rejected":[{"index":2,"field":"ts","reason":"a reason, with spaces: kept","code":"late"}]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}
