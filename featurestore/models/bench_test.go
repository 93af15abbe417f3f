package models_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/storetest"
	"github.com/streamrec/recsys/featurestore/models"
)

// BenchmarkApply applies batches of 4096 new events to a store with
// models; ns/op is per batch.
func BenchmarkApply(b *testing.B) { benchApply(b, models.Options{}) }

// BenchmarkApplyRankerSample is BenchmarkApply with the ranker trained on
// a quarter of the events.
func BenchmarkApplyRankerSample(b *testing.B) { benchApply(b, models.Options{RankerSample: 0.25}) }

func benchApply(b *testing.B, mo models.Options) {
	m, err := models.New(mo)
	if err != nil {
		b.Fatal(err)
	}
	s, err := featurestore.Open("db", featurestore.Options{FS: vfs.NewMem(), Logger: storetest.QuietLogger(), Learner: m})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	rng := rand.New(rand.NewPCG(1, 2))
	batch := make([]featurestore.Entry, storetest.BenchBatch)
	var next uint64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		storetest.BenchEvents(rng, batch, &next)
		b.StartTimer()
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(next)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkMFTop asks for the MF top 50 of a query vector over a
// clustered catalogue (clusteredVecs), by the exact scan and through the
// MF index; the index reports its recall@50 against the exact scan over
// 100 queries, its build time and its size per item.
func BenchmarkMFTop(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		var m *models.Models
		var qs [][]float32
		setup := func(b *testing.B) {
			if m != nil {
				return
			}
			var err error
			if m, err = models.New(models.Options{}); err != nil {
				b.Fatal(err)
			}
			var ids []string
			var vecs []float32
			ids, vecs, qs = clusteredVecs(n, 200, m.FactorDim(), 100, 1)
			m.SetVecs(ids, vecs)
		}
		name := fmt.Sprintf("items=%dk", n/1000)
		b.Run(name+"/exact", func(b *testing.B) {
			setup(b)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				m.MFTopExact(qs[i%len(qs)], 50)
				i++
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/op")
		})
		b.Run(name+"/index", func(b *testing.B) {
			setup(b)
			start := time.Now()
			size := m.BuildMFIndex()
			took := time.Since(start)
			recall := mfRecall(m, qs, 50)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				m.MFTop(qs[i%len(qs)], 50)
				i++
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/op")
			b.ReportMetric(recall, "recall@50")
			b.ReportMetric(took.Seconds(), "build-s")
			b.ReportMetric(float64(size)/float64(n), "B/item")
		})
	}
}
