package serving

import (
	"slices"
	"time"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// modelVersion names the recommender below; a later model replaces it.
const modelVersion = "popularity-affinity-v1"

// affinityBoost weighs the popularity of items in the user's most recent
// categories (newest first) against global popularity (weight 1).
var affinityBoost = []float64{2.0, 1.6, 1.3}

// recommender is a simple, honest baseline: recent popularity (decayed,
// behavior-weighted counts) within the user's most recent categories,
// boosted by recency of the category, filled up with globally popular
// items, excluding what the user bought and explicit exclusions.
type recommender struct {
	store *featurestore.Store
}

func (r *recommender) recommend(user string, k int, category string, exclude []string) ([]*recsysv1.ScoredItem, error) {
	u, found, err := r.store.User(user)
	if err != nil {
		return nil, err
	}
	excluded := make(map[string]bool, len(exclude))
	for _, id := range exclude {
		excluded[id] = true
	}
	var skipErr error
	skip := func(item string) bool {
		if excluded[item] {
			return true
		}
		if !found || u.Count[featurestore.BehaviorPurchase] == 0 {
			return false
		}
		bought, err := r.store.Purchased(user, item)
		if err != nil {
			skipErr = err
		}
		return bought
	}
	if category != "" {
		items, err := r.popular(category, k, skip)
		if err == nil {
			err = skipErr
		}
		return items, err
	}

	best := make(map[string]*recsysv1.ScoredItem)
	add := func(cands []featurestore.Scored, boost float64, reason string) {
		for _, c := range cands {
			score := c.Score * boost
			if cur, ok := best[c.ItemID]; !ok || score > cur.Score {
				best[c.ItemID] = &recsysv1.ScoredItem{ItemId: c.ItemID, Score: score, Reason: reason}
			}
		}
	}
	for i, cat := range u.RecentCategories {
		if i == len(affinityBoost) {
			break
		}
		cands, err := r.store.Popular(cat.ID, k, skip)
		if err != nil {
			return nil, err
		}
		add(cands, affinityBoost[i], "popular in category "+cat.ID+", which you recently browsed")
	}
	cands, err := r.store.Popular("", k, skip)
	if err != nil {
		return nil, err
	}
	add(cands, 1, "popular now")
	if skipErr != nil {
		return nil, skipErr
	}
	out := make([]*recsysv1.ScoredItem, 0, len(best))
	for _, it := range best {
		out = append(out, it)
	}
	slices.SortFunc(out, func(a, b *recsysv1.ScoredItem) int {
		if a.Score != b.Score {
			if a.Score > b.Score {
				return -1
			}
			return 1
		}
		if a.ItemId < b.ItemId {
			return -1
		}
		return 1
	})
	if len(out) > k {
		out = out[:k]
	}
	return out, nil
}

func (r *recommender) popular(category string, k int, skip func(string) bool) ([]*recsysv1.ScoredItem, error) {
	cands, err := r.store.Popular(category, k, skip)
	if err != nil {
		return nil, err
	}
	reason := "popular now"
	if category != "" {
		reason = "popular in category " + category
	}
	out := make([]*recsysv1.ScoredItem, len(cands))
	for i, c := range cands {
		out[i] = &recsysv1.ScoredItem{ItemId: c.ItemID, Score: c.Score, Reason: reason}
	}
	return out, nil
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
