package featurestore

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
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

	if _, err := foldNeighbors([][]byte{d1, base}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a whole record newer than a delta: %v, want ErrCorrupt", err)
	}
	if _, err := foldNeighbors([][]byte{base, d1[:len(d1)-3]}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a truncated delta: %v, want ErrCorrupt", err)
	}
	if _, err := foldNeighbors([][]byte{{9, 1, 2}}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("an unknown version: %v, want ErrCorrupt", err)
	}
}

// The writer's records, the records read back through merges, and the
// records after flushes and a full compaction are the same, and a store
// reopened on them goes on exactly like the one that wrote them.
func TestNeighborDeltasCompact(t *testing.T) {
	log := modelStream(3, 400)
	n := len(log)
	ref := openModelStore(t, vfs.NewMem(), "db", smallModels)
	applySplit(t, ref, log, []int{n})
	want := dumpAll(t, ref, dumpUsers, dumpItems)

	fs := vfs.NewMem()
	s := openModelStore(t, fs, "db", smallModels)
	var ends []int
	for p := 0; p < n; p += 7 {
		ends = append(ends, min(n, p+7))
	}
	applySplit(t, s, log, ends)
	// The writer's form matches what a reader decodes.
	items := s.models.neighbors.Keys()
	if len(items) < 10 {
		t.Fatalf("the writer holds %d neighbour records; the stream trains too little", len(items))
	}
	for _, r := range items {
		w, _ := s.models.neighbors.Peek(r)
		got, err := s.readNeighbors(r)
		if err != nil {
			t.Fatal(err)
		}
		if got.LogMass != w.LogMass || len(got.List) != len(w.P) {
			t.Fatalf("item %s: stored mass %v with %d pairs, writer %v with %d", r, got.LogMass, len(got.List), w.LogMass, len(w.P))
		}
		for i, p := range got.List {
			if p.ID != s.models.names[w.P[i]] || p.LogC != w.C[i] || p.LogMass != w.M[i] {
				t.Fatalf("item %s pair %d: stored %+v, writer %s %v %v", r, i, p, s.models.names[w.P[i]], w.C[i], w.M[i])
			}
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(t.Context(), []byte{0}, []byte{0xff}, true); err != nil {
		t.Fatal(err)
	}
	if got := dumpAll(t, s, dumpUsers, dumpItems); got != want {
		t.Errorf("after 7-event batches and a compaction: %s", diffLines(got, want))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openModelStore(t, fs, "db", smallModels)
	more := modelStream(4, 80)
	for i := range more {
		more[i].Offset += log[n-1].Offset + 1
	}
	applySplit(t, s, more, []int{30, len(more)})
	applySplit(t, ref, more, []int{len(more)})
	if got, want := dumpAll(t, s, dumpUsers, dumpItems), dumpAll(t, ref, dumpUsers, dumpItems); got != want {
		t.Errorf("after reopening on compacted records: %s", diffLines(got, want))
	}
}
