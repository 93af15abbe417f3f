package featurestore

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkTopItems ranks the items of the last hour (about 50,000 with
// events in it) by weighted count.
func BenchmarkTopItems(b *testing.B) {
	s := benchStore(b)
	applyBenchEvents(b, s, rand.New(rand.NewPCG(5, 6)), 25, benchBatch)
	asOf := s.Stats().MaxTS
	for b.Loop() {
		top, err := s.TopItems("", asOf, 3_600_000, 20, true, BehaviorView)
		if err != nil || len(top) != 20 {
			b.Fatal(len(top), err)
		}
	}
}
