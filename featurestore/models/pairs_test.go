package models

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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

// TestFoldNeighborsRandom folds random bases and deltas, fed to the merger
// as Pebble does (the first operand, then older and newer ones), and
// checks the result against the fold of the decoded records: the newest
// value of each pair, new pairs in the order they first appear.
func TestFoldNeighborsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 200 {
		n := 1 + rng.IntN(6)
		ops := make([][]byte, n)
		var want neighborRecord
		at := map[string]int{}
		for k := range ops {
			version := byte(neighborDeltaVersion)
			if k == 0 && rng.IntN(2) == 0 {
				version = modelVersion
			}
			var list []neighbor
			seen := map[string]bool{}
			for range rng.IntN(40) {
				id := fmt.Sprintf("item-%d", rng.IntN(60))
				if seen[id] {
					continue
				}
				seen[id] = true
				list = append(list, neighbor{ID: id, LogC: rng.NormFloat64(), LogMass: rng.NormFloat64()})
			}
			mass := rng.NormFloat64()
			ops[k] = encodeNeighbors(version, mass, list...)
			want.LogMass = mass
			for _, nb := range list {
				if i, ok := at[nb.ID]; ok {
					want.List[i] = nb
					continue
				}
				at[nb.ID] = len(want.List)
				want.List = append(want.List, nb)
			}
		}
		// Pebble starts from any operand and adds the others around it.
		first := rng.IntN(n)
		m := &neighborMerger{}
		if err := m.MergeNewer(ops[first]); err != nil {
			t.Fatal(err)
		}
		for lo, hi := first-1, first+1; lo >= 0 || hi < n; {
			if lo >= 0 && (hi >= n || rng.IntN(2) == 0) {
				if err := m.MergeOlder(ops[lo]); err != nil {
					t.Fatal(err)
				}
				lo--
			} else {
				if err := m.MergeNewer(ops[hi]); err != nil {
					t.Fatal(err)
				}
				hi++
			}
		}
		got, _, err := m.Finish(true)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if got[0] != ops[0][0] {
			t.Fatalf("trial %d: version %d, want the oldest's %d", trial, got[0], ops[0][0])
		}
		var r neighborRecord
		if err := r.decode(got); err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if r.LogMass != want.LogMass || !slices.Equal(r.List, want.List) {
			t.Fatalf("trial %d: got mass %v %v, want %v %v", trial, r.LogMass, r.List, want.LogMass, want.List)
		}
	}
}

// TestFoldNeighborsCorrupt: every malformed operand is ErrCorrupt, never a
// panic.
func TestFoldNeighborsCorrupt(t *testing.T) {
	good := encodeNeighbors(neighborDeltaVersion, 1, neighbor{ID: "a", LogC: 1, LogMass: 2}, neighbor{ID: "bb", LogC: 3, LogMass: 4})
	cases := map[string][]byte{
		"empty":          {},
		"version":        append([]byte{7}, good[1:]...),
		"trailing bytes": append(slices.Clone(good), 0),
		"huge count":     binary.AppendUvarint(append([]byte{neighborDeltaVersion}, good[1:9]...), 1<<40),
		"long id":        append(append([]byte{neighborDeltaVersion}, good[1:9]...), 1, 200, 'x'),
	}
	for i := range len(good) {
		cases[fmt.Sprintf("cut at %d", i)] = good[:i]
	}
	for name, op := range cases {
		if _, err := foldNeighbors([][]byte{op}); !errors.Is(err, featurestore.ErrCorrupt) {
			t.Errorf("%s: %v, want featurestore.ErrCorrupt", name, err)
		}
	}
}

// TestPairRecordFind: find answers from the signature and the slices
// alike through adds and prunes: every partner held is found at its
// index, every other is not.
func TestPairRecordFind(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var names []string
	for i := range 5000 {
		names = append(names, fmt.Sprintf("item-%d", i))
	}
	r := &pairRecord{}
	for step := range 20000 {
		h := int32(rng.IntN(len(names)))
		r.add(h, rng.NormFloat64(), rng.NormFloat64(), 100, names)
		if step%97 != 0 {
			continue
		}
		held := map[int32]int{}
		for i, p := range r.P {
			held[p] = i
		}
		for h := range int32(len(names)) {
			want, ok := held[h]
			if !ok {
				want = -1
			}
			if got := r.find(h); got != want {
				t.Fatalf("step %d: find(%d) = %d, want %d", step, h, got, want)
			}
		}
	}
	// A record read back from its committed form finds the same partners.
	m := &Models{handles: map[string]int32{}}
	for _, n := range names {
		m.intern(n)
	}
	var nr neighborRecord
	for i, h := range r.P {
		nr.List = append(nr.List, neighbor{ID: names[h], LogC: r.C[i], LogMass: r.M[i]})
	}
	back := m.pairsFrom(&nr)
	for h := range int32(len(names)) {
		if got, want := back.find(h), r.find(h); got != want {
			t.Fatalf("read back: find(%d) = %d, want %d", h, got, want)
		}
	}
}
