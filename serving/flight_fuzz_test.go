package serving

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
)

// FuzzFlightQuery: any ticket or command is either planned or refused
// with a status error; it never panics.
func FuzzFlightQuery(f *testing.F) {
	m, err := models.New(models.Options{})
	if err != nil {
		f.Fatal(err)
	}
	st, err := featurestore.Open("state", featurestore.Options{FS: vfs.NewMem(), Learner: m})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	fs := NewFlightServer(st, m, nil)
	for _, seed := range []string{
		`{"view":"user_features"}`,
		`{"view":"item_features","columns":["view_count_1h","item_id"],"ids":["a","b"],"as_of":1700000000000}`,
		`{"view":"category_features","ids":["c1"]}`,
		`{"view":"dead_letters"}`,
		`{"view":"nope"}`, `{"view":"user_features","columns":[]}`, `{}`, `[]`, `{"view":1}`, "",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := decodeQuery("ticket", data)
		if err != nil {
			return
		}
		p, err := fs.planQuery(q)
		if err != nil {
			return
		}
		if p.schema == nil {
			t.Fatalf("plan of %q has no schema", data)
		}
	})
}
