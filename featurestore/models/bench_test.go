package models_test

import (
	"math/rand/v2"
	"testing"

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
