package models

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
)

// The models' own parts: record encodings, the ranker's window metrics and
// publication gate. The models at work in a store are tested in
// models_test.go (package models_test, with the recommender).

// t0 is an arbitrary event time (2023-11-14T22:13:20Z) the tests count from.
const t0 = int64(1_700_000_000_000)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// openStore opens "db" on fs with the event clock and new models with o.
func openStore(fs vfs.FS, o Options) (*featurestore.Store, error) {
	m, err := New(o)
	if err != nil {
		return nil, err
	}
	return featurestore.Open("db", featurestore.Options{FS: fs, Logger: quietLogger(), CacheBytes: 8 << 20, Clock: "event", Learner: m})
}

// openInternal is openStore that also returns the models and closes the
// store when the test ends.
func openInternal(t testing.TB, fs vfs.FS, o Options) (*featurestore.Store, *Models) {
	t.Helper()
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s, err := featurestore.Open("db", featurestore.Options{FS: fs, Logger: quietLogger(), CacheBytes: 8 << 20, Clock: "event", Learner: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, m
}

func ev(id, user, item, cat string, b featurestore.Behavior, ts int64) featurestore.Event {
	return featurestore.Event{ID: id, UserID: user, ItemID: item, CategoryID: cat, Behavior: b, TS: ts}
}

func closeRel(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(math.Abs(a), math.Abs(b)) }

// checkCorruptions decodes damaged copies of the valid encoding b: each
// must fail with ErrCorrupt, without panicking.
func checkCorruptions(t *testing.T, b []byte, decode func([]byte) error) {
	t.Helper()
	try := func(what string, d []byte) {
		t.Helper()
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("%s: decode(%x) panicked: %v", what, d, r)
			}
		}()
		if err := decode(d); !errors.Is(err, featurestore.ErrCorrupt) {
			t.Errorf("%s: decode(%x) = %v, want ErrCorrupt", what, d, err)
		}
	}
	for n := range len(b) {
		try("truncated", b[:n])
	}
	try("trailing byte", append(slices.Clip(b), 0))
	// Versions no record has (metas go up to 3).
	for _, v := range []byte{0, metaVersion + 1, 0xff} {
		d := slices.Clone(b)
		d[0] = v
		try("version", d)
	}
}

func TestWindowMetrics(t *testing.T) {
	ln := math.Log
	nan := math.NaN()
	for _, c := range []struct {
		name    string
		p       []float32
		labels  []byte
		auc, ll float64
	}{
		{"perfect", []float32{0.125, 0.25, 0.75, 0.875}, []byte{0, 0, 1, 1}, 1, -(ln(0.875) + ln(0.75)) / 2},
		{"inverted", []float32{0.875, 0.75, 0.25, 0.125}, []byte{0, 0, 1, 1}, 0, -(ln(0.125) + ln(0.25)) / 2},
		{"all ties", []float32{0.5, 0.5, 0.5, 0.5}, []byte{0, 1, 0, 1}, 0.5, ln(2)},
		{"some ties", []float32{0.5, 0.5, 0.875}, []byte{0, 1, 1}, 0.75, -(ln(0.5) + ln(0.5) + ln(0.875)) / 3},
		{"unordered", []float32{0.75, 0.125, 0.875, 0.25}, []byte{1, 0, 0, 1}, 0.5, -(ln(0.75) + ln(0.875) + ln(0.125) + ln(0.25)) / 4},
		{"one class", []float32{0.25, 0.75}, []byte{1, 1}, nan, -(ln(0.25) + ln(0.75)) / 2},
		{"clamped", []float32{0, 1}, []byte{1, 0}, 0, -ln(1e-7)},
		{"empty", nil, nil, nan, nan},
	} {
		auc, ll := windowMetrics(c.p, c.labels)
		if !(auc == c.auc || math.IsNaN(auc) && math.IsNaN(c.auc)) {
			t.Errorf("%s: AUC = %v, want %v", c.name, auc, c.auc)
		}
		if !(closeRel(ll, c.ll, 1e-6) || math.IsNaN(ll) && math.IsNaN(c.ll)) {
			t.Errorf("%s: log loss = %v, want %v", c.name, ll, c.ll)
		}
	}
	// AUC is the share of (positive, negative) pairs ordered right, ties
	// counting half.
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		n := 1 + rng.IntN(30)
		p, labels := make([]float32, n), make([]byte, n)
		for i := range p {
			p[i] = float32(rng.IntN(5)) / 4
			labels[i] = byte(rng.IntN(2))
		}
		var good, pairs float64
		for i := range p {
			for j := range p {
				if labels[i] == 1 && labels[j] == 0 {
					pairs++
					switch {
					case p[i] > p[j]:
						good++
					case p[i] == p[j]:
						good += 0.5
					}
				}
			}
		}
		auc, _ := windowMetrics(p, labels)
		if pairs == 0 {
			if !math.IsNaN(auc) {
				t.Fatalf("AUC of %v %v = %v, want NaN", p, labels, auc)
			}
			continue
		}
		if !closeRel(auc, good/pairs, 1e-12) {
			t.Fatalf("AUC of %v %v = %v, want %v", p, labels, auc, good/pairs)
		}
	}
}

// A new weight version is published only if its rolling AUC is at least
// the published version's minus PublishMargin (the first always); it
// carries the weights after the step that triggered the check.
func TestRankerPublicationGate(t *testing.T) {
	_, m := openInternal(t, vfs.NewMem(), Options{RankerWindow: 8, PublishEvery: 1})
	o := &m.opts
	// Seven examples in the window; the step adds an eighth, a positive.
	labels := []byte{1, 0, 1, 0, 0, 1, 0}
	good := []float32{0.875, 0.125, 0.75, 0.25, 0.375, 0.625, 0.25}
	bad := []float32{0.125, 0.875, 0.25, 0.75, 0.625, 0.375, 0.75}
	slightlyWorse := []float32{0.875, 0.125, 0.75, 0.25, 0.375, 0.625, 0.7} // one discordant pair of 16
	step := func(version int64, train, pub []float32, margin float64, every int) (published bool, r *rankerState, before []float64) {
		o.PublishMargin, o.PublishEvery = margin, every
		mb := &batch{m: m, meta: &modelMeta{}}
		r = &mb.meta.Ranker
		r.init(numRankFeatures)
		r.Z[0] = -2 // a positive bias, so the training weights are not the published zeros
		r.Version = version
		r.Train, r.Pub, r.Labels = slices.Clone(train), slices.Clone(pub), slices.Clone(labels)
		r.Pos = len(labels)
		before = r.weights(o)
		ctx := &Context{now: t0, model: &User{}}
		if err := mb.learnRanker(ctx, &candidateInfo{ID: "x"}, 1); err != nil {
			t.Fatal(err)
		}
		if len(r.Labels) != 8 || r.Labels[7] != 1 || r.Examples != 1 {
			t.Fatalf("window after the step: %v, examples %d", r.Labels, r.Examples)
		}
		return r.Version != version, r, before
	}
	for _, c := range []struct {
		name       string
		version    int64
		train, pub []float32
		margin     float64
		every      int
		want       bool
		trainAUC   float64
		pubAUC     float64
	}{
		{"better", 1, good, bad, 0.005, 1, true, 1, 0},
		{"worse", 1, bad, good, 0.005, 1, false, 3.0 / 16, 1},
		{"first version", 0, bad, good, 0.005, 1, true, 3.0 / 16, 1},
		{"within margin", 1, slightlyWorse, good, 0.1, 1, true, 15.0 / 16, 1},
		{"beyond margin", 1, slightlyWorse, good, 0.05, 1, false, 15.0 / 16, 1},
		{"equal", 1, good, good, 0.005, 1, true, 1, 1},
		{"not a check", 1, good, bad, 0.005, 2, false, 1, 0},
	} {
		published, r, before := step(c.version, c.train, c.pub, c.margin, c.every)
		trainAUC, _ := windowMetrics(r.Train, r.Labels)
		pubAUC, _ := windowMetrics(r.Pub, r.Labels)
		if trainAUC != c.trainAUC || pubAUC != c.pubAUC {
			t.Errorf("%s: window AUCs train %v published %v, test expects %v %v", c.name, trainAUC, pubAUC, c.trainAUC, c.pubAUC)
		}
		if published != c.want || r.publishedDirty != c.want {
			t.Errorf("%s: published %v (dirty %v), want %v", c.name, published, r.publishedDirty, c.want)
			continue
		}
		if published {
			// The published weights include the step just taken.
			after := r.weights(o)
			if r.Version != c.version+1 || !slices.Equal(r.Published, after) || slices.Equal(after, before) || r.PubAUC != trainAUC {
				t.Errorf("%s: version %d, published %v (want the weights after the step %v), PubAUC %v", c.name, r.Version, r.Published, after, r.PubAUC)
			}
		} else if !slices.Equal(r.Published, make([]float64, numRankFeatures)) {
			t.Errorf("%s: published weights changed to %v without a new version", c.name, r.Published)
		}
	}
}

// Regression (was a bug): the metadata decoder accepts ring and window positions that the
// writer then indexes with: a negative position (a uvarint above
// MaxInt64) or RingPos == negRingSize. Once the ring or the ranker window
// is full, Apply panics with an index out of range instead of the store
// reporting featurestore.ErrCorrupt when it opens.
func TestModelMetaDecodeRejectsBadPositions(t *testing.T) {
	full := func() *modelMeta {
		m := &modelMeta{}
		for i := range negRingSize {
			m.Ring = append(m.Ring, fmt.Sprint("i", i%3))
		}
		m.Ranker.init(numRankFeatures)
		m.Ranker.Train, m.Ranker.Pub, m.Ranker.Labels = make([]float32, 4), make([]float32, 4), make([]byte, 4)
		return m
	}
	for name, mod := range map[string]func(m *modelMeta){
		"ring position -1":   func(m *modelMeta) { m.RingPos = -1 },
		"ring position 4096": func(m *modelMeta) { m.RingPos = negRingSize },
		"window position -1": func(m *modelMeta) { m.Ranker.Pos = -1 },
	} {
		m := full()
		mod(m)
		var d modelMeta
		err := d.decode(m.appendTo(nil))
		if err == nil {
			t.Errorf("%s: decoded without error (RingPos %d, Pos %d)", name, d.RingPos, d.Ranker.Pos)
		}
		// What it leads to: a store with this metadata opens, and Apply
		// panics once the ring (or window) is full. (Frozen models write
		// their metadata unchanged with the batch of one event.)
		fs := vfs.NewMem()
		s, ms := openInternal(t, fs, Options{RankerWindow: 4})
		ms.Freeze(true)
		ms.meta = m
		if _, err := s.Apply(1, []featurestore.Entry{{Offset: 0, Event: ev("w", "writer", "w0", "c", featurestore.BehaviorView, t0)}}); err != nil {
			t.Fatal(err)
		}
		if v, _, err := s.ReadKey([]byte(keyModels)); err != nil || !bytes.Equal(v, m.appendTo(nil)) {
			t.Fatalf("%s: stored metadata %x, %v; want the test's", name, v, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s, err = openStore(fs, Options{RankerWindow: 4})
		if err != nil {
			if !errors.Is(err, featurestore.ErrCorrupt) {
				t.Errorf("%s: Open = %v, want ErrCorrupt", name, err)
			}
			continue
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s: Apply panicked: %v", name, r)
				}
			}()
			_, _ = s.Apply(3, []featurestore.Entry{{Offset: 1, Event: ev("a", "u", "i0", "c", featurestore.BehaviorView, t0)}, {Offset: 2, Event: ev("b", "u", "i1", "c", featurestore.BehaviorView, t0+1)}})
		}()
		_ = s.Close()
	}
}

// modelRecord is what the model records stored in Pebble have in common.
type modelRecord interface {
	appendTo(b []byte) []byte
	decode(b []byte) error
}

// sampleModelRecords are model records of every kind, with and without
// optional parts.
func sampleModelRecords() []modelRecord {
	meta := &modelMeta{Ring: []string{"i1", "i2", "i1"}, RingPos: 3, Learned: 7, Pairs: 12, LastTS: t0, Items: 2, DecayMS: 30 * 24 * 3600 * 1000}
	meta.Ranker.init(numRankFeatures)
	meta.Ranker.Z[0], meta.Ranker.N[0], meta.Ranker.Published[1] = -0.5, 2.25, 0.125
	meta.Ranker.Version, meta.Ranker.Examples, meta.Ranker.LastTS, meta.Ranker.PubAUC = 3, 40, t0, 0.75
	meta.Ranker.Train, meta.Ranker.Pub, meta.Ranker.Labels, meta.Ranker.Pos = []float32{0.25, 0.5}, []float32{0.5, 0.5}, []byte{1, 0}, 1
	return []modelRecord{
		&User{},
		&User{History: []Interaction{{Item: "i1", TS: t0, Behavior: featurestore.BehaviorPurchase, Count: 255}, {Item: "é", TS: -1, Behavior: featurestore.BehaviorFav, Count: 1}},
			Events: 300, Vec: []float32{0.5, -1.25, float32(math.Inf(1))}},
		&Item{},
		&Item{Seq: 1 << 31, Vec: []float32{1, 2}, Users: []featurestore.Recent{{ID: "u1", TS: t0}, {ID: "u2", TS: t0 - 1}}},
		&neighborRecord{LogMass: math.Inf(-1)},
		&neighborRecord{LogMass: 3.5, List: []neighbor{{ID: "a", LogC: -2, LogMass: 1}, {ID: "b", LogC: math.Inf(-1), LogMass: 0}}},
		&modelMeta{DecayMS: 1},
		meta,
	}
}

// newLike returns an empty record of r's kind.
func newLike(r modelRecord) modelRecord {
	switch r.(type) {
	case *User:
		return new(User)
	case *Item:
		return new(Item)
	case *neighborRecord:
		return new(neighborRecord)
	default:
		return new(modelMeta)
	}
}

var modelRecordKinds = []modelRecord{new(User), new(Item), new(neighborRecord), new(modelMeta)}

// Model records decode to what was encoded and re-encode to the same
// bytes; damaged encodings fail with featurestore.ErrCorrupt.
func TestModelRecordRoundTrip(t *testing.T) {
	for i, r := range sampleModelRecords() {
		b := r.appendTo(nil)
		d := newLike(r)
		if err := d.decode(b); err != nil {
			t.Fatalf("sample %d (%T): decode: %v", i, r, err)
		}
		if meta, ok := r.(*modelMeta); ok {
			// The ring and the window are in chunks of their own.
			d = readMetaChunks(t, writeMetaChunks(t, meta))
		}
		if got := d.appendTo(nil); !bytes.Equal(got, b) {
			t.Errorf("sample %d (%T): re-encoding %x, want %x", i, r, got, b)
		}
		// (%+v prints nil and empty slices alike, and floats exactly.)
		if got, want := fmt.Sprintf("%+v", d), fmt.Sprintf("%+v", r); got != want {
			t.Errorf("sample %d: decoded %s, want %s", i, got, want)
		}
		checkCorruptions(t, b, newLike(r).decode)
	}
}

// FuzzModelRecordDecode feeds arbitrary bytes to every model record
// decoder: none may panic or fail with another error than featurestore.ErrCorrupt, and
// what one accepts re-encodes to bytes it decodes again to the same
// encoding, never longer than the input (varints may have been longer).
func FuzzModelRecordDecode(f *testing.F) {
	for _, r := range sampleModelRecords() {
		f.Add(r.appendTo(nil))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, kind := range modelRecordKinds {
			r := newLike(kind)
			if err := r.decode(b); err != nil {
				if !errors.Is(err, featurestore.ErrCorrupt) {
					t.Fatalf("%T: decode error %v is not ErrCorrupt", kind, err)
				}
				continue
			}
			enc := r.appendTo(nil)
			// An older meta value gains what later versions added.
			_, meta := r.(*modelMeta)
			if len(enc) > len(b) && !(meta && b[0] < metaVersion) {
				t.Fatalf("%T: re-encoding %x is longer than the input %x", kind, enc, b)
			}
			r2 := newLike(kind)
			if err := r2.decode(enc); err != nil {
				t.Fatalf("%T: re-decode of %x: %v", kind, enc, err)
			}
			if enc2 := r2.appendTo(nil); !bytes.Equal(enc, enc2) {
				t.Fatalf("%T: encoding not stable: %x vs %x", kind, enc, enc2)
			}
		}
	})
}

// writeMetaChunks writes meta's value and every chunk into a map by key.
func writeMetaChunks(t *testing.T, meta *modelMeta) map[string][]byte {
	t.Helper()
	kv := make(map[string][]byte)
	d := metaDirty{all: true}
	if err := d.write(meta, func(k, v []byte) error { kv[string(k)] = slices.Clone(v); return nil }); err != nil {
		t.Fatal(err)
	}
	return kv
}

func mapReader(kv map[string][]byte) func([]byte) ([]byte, bool, error) {
	return func(k []byte) ([]byte, bool, error) {
		v, ok := kv[string(k)]
		return v, ok, nil
	}
}

// readMetaChunks reads a meta back from writeMetaChunks' map.
func readMetaChunks(t *testing.T, kv map[string][]byte) *modelMeta {
	t.Helper()
	var got modelMeta
	if err := readMeta(mapReader(kv), &got, nil); err != nil {
		t.Fatalf("readMeta: %v", err)
	}
	return &got
}

// Older meta values read with what later versions added at its zero or
// legacy value: version 1 (before the history weights) with zero history
// weights, versions 1 and 2 (before the decay half-life) with the 7 days
// their neighbour records were learned with; everything else as written,
// the ring and the window from the value itself, and every chunk is to be
// written with the next value.
func TestModelMetaVersion1(t *testing.T) {
	recs := sampleModelRecords()
	meta := recs[len(recs)-1].(*modelMeta)
	meta.Ranker.HZ[2], meta.Ranker.HN[2], meta.Ranker.HPublished[2] = 1.5, 4, -0.25
	v2 := meta.appendVersion(nil, 2)
	// The history weights are the tail: their count and 3 × 8 bytes each.
	v1 := slices.Clone(v2[:len(v2)-1-24*numRankFeatures])
	v1[0] = modelVersion
	var got modelMeta
	var dirty metaDirty
	if err := readMeta(mapReader(map[string][]byte{keyModels: v1}), &got, &dirty); err != nil {
		t.Fatalf("decode version 1: %v", err)
	}
	want := *meta
	want.DecayMS = legacyDecayMS
	want.Ranker.HZ, want.Ranker.HN, want.Ranker.HPublished = make([]float64, numRankFeatures), make([]float64, numRankFeatures), make([]float64, numRankFeatures)
	if g, w := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", want); g != w {
		t.Errorf("version 1 decoded %s, want %s", g, w)
	}
	if !dirty.all {
		t.Error("version 1: chunks not marked to be written")
	}
	got = modelMeta{}
	if err := readMeta(mapReader(map[string][]byte{keyModels: v2}), &got, nil); err != nil || got.Ranker.HPublished[2] != -0.25 || got.DecayMS != legacyDecayMS || !slices.Equal(got.Ring, meta.Ring) {
		t.Errorf("version 2: %v, history weights %v, decay %d ms, ring %v", err, got.Ranker.HPublished, got.DecayMS, got.Ring)
	}
	if got := readMetaChunks(t, writeMetaChunks(t, meta)); got.DecayMS != meta.DecayMS {
		t.Errorf("version 3: decay %d ms, want %d", got.DecayMS, meta.DecayMS)
	}
}

// The meta's value names the chunks it needs: a missing or damaged chunk
// is ErrCorrupt; a batch that changed one ring id and one window entry
// writes the value and those two chunks, not the whole ring and window.
func TestModelMetaChunks(t *testing.T) {
	meta := &modelMeta{DecayMS: 1}
	meta.Ranker.init(numRankFeatures)
	for i := range negRingSize {
		meta.Ring = append(meta.Ring, fmt.Sprint("i", i))
	}
	for i := range 3*winChunk + 7 {
		meta.Ranker.Train = append(meta.Ranker.Train, float32(i))
		meta.Ranker.Pub = append(meta.Ranker.Pub, float32(-i))
		meta.Ranker.Labels = append(meta.Ranker.Labels, byte(i%2))
	}
	meta.Ranker.Pos = 5
	kv := writeMetaChunks(t, meta)
	if want := 1 + negRingSize/ringChunk + 4; len(kv) != want {
		t.Fatalf("%d keys written, want %d", len(kv), want)
	}
	if got, want := fmt.Sprintf("%+v", readMetaChunks(t, kv)), fmt.Sprintf("%+v", meta); got != want {
		t.Fatalf("read back %s, want %s", got, want)
	}
	for _, k := range []string{string(ringChunkKey(3)), string(winChunkKey(3))} {
		for name, damage := range map[string]func([]byte) ([]byte, bool){
			"missing":   func([]byte) ([]byte, bool) { return nil, false },
			"truncated": func(v []byte) ([]byte, bool) { return v[:len(v)-1], true },
			"longer":    func(v []byte) ([]byte, bool) { return append(slices.Clone(v), 0), true },
		} {
			bad := maps.Clone(kv)
			if v, ok := damage(kv[k]); ok {
				bad[k] = v
			} else {
				delete(bad, k)
			}
			var got modelMeta
			if err := readMeta(mapReader(bad), &got, nil); !errors.Is(err, featurestore.ErrCorrupt) {
				t.Errorf("chunk %q %s: %v, want ErrCorrupt", k, name, err)
			}
		}
	}
	var d metaDirty
	d.mark(false, 300)
	d.mark(true, 2*winChunk+1)
	var keys []string
	if err := d.write(meta, func(k, _ []byte) error { keys = append(keys, string(k)); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{keyModels, string(ringChunkKey(1)), string(winChunkKey(2))}; !slices.Equal(keys, want) {
		t.Errorf("wrote %q, want %q", keys, want)
	}
	keys = nil
	if err := d.write(meta, func(k, _ []byte) error { keys = append(keys, string(k)); return nil }); err != nil || len(keys) != 1 {
		t.Errorf("after the write: wrote %q (%v), want the value alone", keys, err)
	}
}
