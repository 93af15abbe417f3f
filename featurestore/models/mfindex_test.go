package models_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
)

// clusteredVecs returns n items with dim-d factors around k random
// centres (tastes), their norms spread as MF factors' are (popular items
// have larger ones), and queries user vectors near random centres.
func clusteredVecs(n, k, d, queries int, seed uint64) (ids []string, vecs []float32, qs [][]float32) {
	rng := rand.New(rand.NewPCG(seed, 1))
	centres := make([][]float32, k)
	sd := float32(1 / math.Sqrt(float64(d)))
	for i := range centres {
		c := make([]float32, d)
		for j := range c {
			c[j] = float32(rng.NormFloat64()) * sd
		}
		centres[i] = c
	}
	ids = make([]string, n)
	vecs = make([]float32, n*d)
	for i := range n {
		ids[i] = fmt.Sprintf("i%d", i)
		c := centres[rng.IntN(len(centres))]
		scale := float32(math.Exp(0.3 * rng.NormFloat64()))
		for j := range d {
			vecs[i*d+j] = (c[j] + 0.5*float32(rng.NormFloat64())*sd) * scale
		}
	}
	for range queries {
		c := centres[rng.IntN(len(centres))]
		q := make([]float32, d)
		for j := range q {
			q[j] = 2 * (c[j] + 0.5*float32(rng.NormFloat64())*sd)
		}
		qs = append(qs, q)
	}
	return ids, vecs, qs
}

// mfRecall is the mean share of the exact top k that MFTop returns, over
// the queries qs.
func mfRecall(m *models.Models, qs [][]float32, k int) float64 {
	var sum float64
	for _, q := range qs {
		exact := m.MFTopExact(q, k)
		got := make(map[string]bool)
		for _, c := range m.MFTop(q, k) {
			got[c.ItemID] = true
		}
		hit := 0
		for _, c := range exact {
			if got[c.ItemID] {
				hit++
			}
		}
		sum += float64(hit) / float64(len(exact))
	}
	return sum / float64(len(qs))
}

func TestMFIndexRecall(t *testing.T) {
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50_000
	ids, vecs, qs := clusteredVecs(n, 200, m.FactorDim(), 100, 1)
	m.SetVecs(ids, vecs)
	if r := mfRecall(m, qs, 50); r != 1 {
		t.Fatalf("recall@50 without an index = %v, want 1 (the exact scan)", r)
	}
	size := m.BuildMFIndex()
	if got := m.MFIndexed(); got != n {
		t.Fatalf("index holds %d items, want %d", got, n)
	}
	r := mfRecall(m, qs, 50)
	t.Logf("recall@50 %.4f, index %d B (%.1f B/item)", r, size, float64(size)/n)
	if r < 0.95 {
		t.Errorf("recall@50 = %.4f, want ≥ 0.95", r)
	}
}

func TestMFIndexNewItems(t *testing.T) {
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{MFIndexMin: 100})
	applyAll(t, s, ev("e1", "u", "x", "c", featurestore.BehaviorView, t0))
	d := s.M.FactorDim()
	ids, vecs, _ := clusteredVecs(10_000, 40, d, 0, 2)
	s.M.SetVecs(ids, vecs)
	if s.M.BuildMFIndex() == 0 {
		t.Fatal("no index built")
	}
	// New items, with random factors far longer than the others', are
	// the best for a query equal to their factors.
	rng := rand.New(rand.NewPCG(3, 4))
	var newIDs []string
	fresh := make([]float32, 10*d)
	for i := range 10 {
		newIDs = append(newIDs, fmt.Sprintf("new%d", i))
		for j := range d {
			fresh[i*d+j] = 20 * float32(rng.NormFloat64())
		}
	}
	s.M.SetVecs(newIDs, fresh)
	for i, id := range newIDs {
		top := s.M.MFTop(fresh[i*d:(i+1)*d], 10)
		if len(top) == 0 || top[0].ItemID != id {
			t.Errorf("MFTop(factors of %s) = %v, want %s first", id, scoredIDs(top), id)
		}
	}
	// Abort reloads the table: the index is gone with it.
	if err := s.M.Abort(); err != nil {
		t.Fatal(err)
	}
	if got := s.M.MFIndexed(); got != 0 {
		t.Errorf("after Abort the index holds %d items, want none", got)
	}
	if top := s.M.MFTop(make([]float32, d), 5); len(top) != 1 || top[0].ItemID != "x" {
		t.Errorf("MFTop after Abort = %v, want the committed item x alone", scoredIDs(top))
	}
}

// mfIndexEvents are batches of events over items enough for an index
// from MFIndexMin 20.
func mfIndexEvents(batches int) [][]featurestore.Event {
	out := make([][]featurestore.Event, batches)
	for b := range out {
		for i := range 40 {
			id := fmt.Sprintf("b%de%d", b, i)
			out[b] = append(out[b], ev(id, fmt.Sprintf("u%d", i%7), fmt.Sprintf("it%d", (b*13+i)%60), "c", featurestore.BehaviorView, t0+int64(b*40+i)*minute))
		}
	}
	return out
}

func TestMFIndexBuildDoesNotBlockApply(t *testing.T) {
	checkGoroutines(t)
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{MFIndexMin: 20, Dim: 8})
	copied, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.M.SetMFBuildHook(func() {
		once.Do(func() { close(copied) })
		<-release
	})
	batches := mfIndexEvents(3)
	applyAll(t, s, batches[0]...) // 40 items: a build starts
	select {
	case <-copied:
	case <-time.After(time.Minute):
		t.Fatal("no index build started")
	}
	// The build is held after its copy of the table: Apply and its Commit
	// go on, and MF candidates come from the exact scan meanwhile.
	applyAll(t, s, batches[1]...)
	if got := s.M.MFIndexed(); got != 0 {
		t.Fatalf("index of %d items published while its build is held", got)
	}
	u := userFactors(t, s)["u1"]
	if got, want := scoredIDs(s.M.MFTop(u, 10)), scoredIDs(s.M.MFTopExact(u, 10)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("MFTop before the first index = %v, want the exact %v", got, want)
	}
	if st := s.M.MFIndexStats(); st.Builds != 0 || st.Items != 0 {
		t.Errorf("stats while the first build is held = %+v, want no build", st)
	}
	close(release)
	s.M.WaitMFBuild()
	if got := s.M.MFIndexed(); got != 40 {
		t.Errorf("index holds %d items, want the 40 of the first batch", got)
	}
	if st := s.M.MFIndexStats(); st.Builds != 1 || st.Items != 40 || st.Bytes <= 0 || st.LastBuild <= 0 {
		t.Errorf("stats after the first build = %+v, want one build of 40 items", st)
	}
	applyAll(t, s, batches[2]...)

	// The index is serving data: the model records are those of a store
	// without one.
	off := openModelStore(t, vfs.NewMem(), "db", models.Options{MFIndexMin: -1, Dim: 8})
	for _, b := range batches {
		applyAll(t, off, b...)
	}
	if got, want := dumpRawModels(t, s), dumpRawModels(t, off); got != want {
		t.Errorf("model records with the MF index differ from those without:\n%s", diffLines(want, got))
	}
}

func TestMFIndexCloseDuringBuild(t *testing.T) {
	checkGoroutines(t)
	s := openModelStore(t, vfs.NewMem(), "db", models.Options{MFIndexMin: 20, Dim: 8})
	copied, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.M.SetMFBuildHook(func() {
		once.Do(func() { close(copied) })
		<-release
	})
	applyAll(t, s, mfIndexEvents(1)[0]...)
	<-copied
	// Close stops the build and waits for its goroutine (checkGoroutines
	// finds none left); the second Close is a no-op.
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	close(release)
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
