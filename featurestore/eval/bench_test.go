package eval

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/updater/synth"
)

// denseEvents is a synthetic stream with few users and long histories
// (users × perUser events over 30 days), the shape on which the
// evaluation's per-target work dominates.
func denseEvents(tb testing.TB, users, perUser int) []featurestore.Event {
	g, err := synth.New(synth.Config{Seed: 7, Users: users, Items: 4 * users, Categories: 50,
		Events: users * perUser, Start: time.Date(2017, 11, 1, 0, 0, 0, 0, time.UTC), Span: 30 * 24 * time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	behaviors := map[string]featurestore.Behavior{"view": featurestore.BehaviorView, "cart": featurestore.BehaviorCart,
		"fav": featurestore.BehaviorFav, "purchase": featurestore.BehaviorPurchase}
	var evs []featurestore.Event
	for {
		e, ok := g.Next()
		if !ok {
			break
		}
		evs = append(evs, featurestore.Event{ID: strconv.Itoa(len(evs)), UserID: e.UserID, ItemID: e.ItemID, CategoryID: e.CategoryID,
			Behavior: behaviors[e.Behavior], TS: e.TS})
	}
	SortByTime(evs)
	return evs
}

// BenchmarkEvalDense is a whole run, every method, on 100 users × 200
// events (20 k events).
func BenchmarkEvalDense(b *testing.B) {
	evs := denseEvents(b, 100, 200)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rep, err := Run(context.Background(), evs, Options{Warmup: 0.5, Ks: []int{10, 20}, ViewSample: 0.02,
			Bootstrap: 200, Seed: 1, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(evs))/rep.Seconds, "events/s")
	}
}
