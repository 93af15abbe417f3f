package models

import (
	"errors"
	"testing"

	"github.com/streamrec/recsys/featurestore"
)

func encodeNeighbors(version byte, mass float64, list ...neighbor) []byte {
	b := (&neighborRecord{LogMass: mass, List: list}).appendTo(nil)
	b[0] = version
	return b
}

func TestFoldNeighbors(t *testing.T) {
	base := encodeNeighbors(modelVersion, 1, neighbor{ID: "a", LogC: 1, LogMass: 2}, neighbor{ID: "b", LogC: 3, LogMass: 4})
	d1 := encodeNeighbors(neighborDeltaVersion, 5, neighbor{ID: "b", LogC: 6, LogMass: 7}, neighbor{ID: "c", LogC: 8, LogMass: 9})
	d2 := encodeNeighbors(neighborDeltaVersion, 10, neighbor{ID: "c", LogC: 11, LogMass: 12}, neighbor{ID: "d", LogC: 13, LogMass: 14})
	want := []neighbor{{ID: "a", LogC: 1, LogMass: 2}, {ID: "b", LogC: 6, LogMass: 7}, {ID: "c", LogC: 11, LogMass: 12}, {ID: "d", LogC: 13, LogMass: 14}}

	check := func(name string, got []byte, version byte, mass float64, list []neighbor) {
		t.Helper()
		if got[0] != version {
			t.Errorf("%s: version %d, want %d", name, got[0], version)
		}
		var r neighborRecord
		if err := r.decode(got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.LogMass != mass || len(r.List) != len(list) {
			t.Fatalf("%s: mass %v and %d pairs, want %v and %d", name, r.LogMass, len(r.List), mass, len(list))
		}
		for i := range list {
			if r.List[i] != list[i] {
				t.Errorf("%s: pair %d = %+v, want %+v", name, i, r.List[i], list[i])
			}
		}
	}
	all, err := foldNeighbors([][]byte{base, d1, d2})
	if err != nil {
		t.Fatal(err)
	}
	check("base+deltas", all, modelVersion, 10, want)

	// Associative: deltas folded first (a compaction without the base),
	// then onto the base, give the same record.
	deltas, err := foldNeighbors([][]byte{d1, d2})
	if err != nil {
		t.Fatal(err)
	}
	check("deltas", deltas, neighborDeltaVersion, 10, want[1:])
	again, err := foldNeighbors([][]byte{base, deltas})
	if err != nil {
		t.Fatal(err)
	}
	check("base+folded deltas", again, modelVersion, 10, want)

	if _, err := foldNeighbors([][]byte{d1, base}); !errors.Is(err, featurestore.ErrCorrupt) {
		t.Errorf("a whole record newer than a delta: %v, want featurestore.ErrCorrupt", err)
	}
	if _, err := foldNeighbors([][]byte{base, d1[:len(d1)-3]}); !errors.Is(err, featurestore.ErrCorrupt) {
		t.Errorf("a truncated delta: %v, want featurestore.ErrCorrupt", err)
	}
	if _, err := foldNeighbors([][]byte{{9, 1, 2}}); !errors.Is(err, featurestore.ErrCorrupt) {
		t.Errorf("an unknown version: %v, want featurestore.ErrCorrupt", err)
	}
}
