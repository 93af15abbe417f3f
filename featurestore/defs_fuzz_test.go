package featurestore

import (
	"errors"
	"testing"
)

// FuzzParseDefinitions: any file either compiles or fails with a
// DefinitionError naming a line; it never panics.
func FuzzParseDefinitions(f *testing.F) {
	f.Add(defaultDefinitions)
	f.Add([]byte("views:\n  - name: v\n    entity: user\n    features:\n      - {name: x, agg: count, behavior: view, window: 1h}\n"))
	f.Add([]byte("views: []\n"))
	f.Add([]byte("views:\n  - name: v\n    entity: category\n    ttl: 1d\n    features:\n      - {name: t, agg: top_items, window: 2h, k: 3, by: weighted}\n"))
	f.Add([]byte("behavior_weights: {view: -1}\nviews: x\n"))
	f.Add([]byte("\t:::"))
	f.Fuzz(func(t *testing.T, data []byte) {
		defs, err := ParseDefinitions("f.yaml", data)
		if err != nil {
			var de *DefinitionError
			if !errors.As(err, &de) || de.Line < 1 || de.File != "f.yaml" || de.Reason == "" {
				t.Fatalf("error %v is not a DefinitionError with a line and a reason", err)
			}
			return
		}
		for _, v := range defs.Views {
			if len(v.Features) == 0 {
				t.Fatalf("view %s compiled without features", v.Name)
			}
		}
	})
}
