package featurestore

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkTopItems ranks the items of the last hour (about 50,000 with
// events in it) by weighted count.
func BenchmarkTopItems(b *testing.B) {
	s := benchStore(b)
	rng := rand.New(rand.NewPCG(5, 6))
	batch := make([]Entry, benchBatch)
	var next uint64
	for range 25 {
		benchEvents(rng, batch, &next)
		if _, err := s.Apply(next, batch); err != nil {
			b.Fatal(err)
		}
	}
	asOf := s.Stats().MaxTS
	for b.Loop() {
		top, err := s.TopItems("", asOf, 3_600_000, 20, true, BehaviorView)
		if err != nil || len(top) != 20 {
			b.Fatal(len(top), err)
		}
	}
}
