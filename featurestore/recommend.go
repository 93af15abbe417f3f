package featurestore

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"slices"
	"strings"
)

// The recommendation methods. MethodFull is what the API serves; the
// others are its single candidate sources, for evaluation.
const (
	MethodFull          = "full"
	MethodPopular       = "popular"        // decayed popularity (the popularity index)
	MethodRecentPopular = "recent_popular" // weighted events in the last hour
	MethodItem2Item     = "item2item"      // similarity to the user's history
	MethodMF            = "mf"             // matrix factorization over the whole catalogue
	MethodUser2User     = "user2user"      // what similar users did
)

// RecommendOptions says what Recommend returns.
type RecommendOptions struct {
	K           int
	Category    string          // only items of this category; "" for all
	Exclude     map[string]bool // never these items
	ExcludeSeen bool            // drop every item the user touched within SeenTTL (see seen.go)
	// KeepPurchased lets items the user bought be recommended (re-purchases
	// of consumables); by default they are dropped.
	KeepPurchased bool
	Method        string // default MethodFull
}

// Recommendation is one recommended item.
type Recommendation struct {
	ItemID string
	Score  float64
	Reason string
}

// readModel decodes the committed record at key into rec and reports
// whether there was one; what names the record in errors.
func readModel[T interface{ decode([]byte) error }](s *Store, key []byte, what, id string, rec T) (bool, error) {
	v, ok, err := s.get(key)
	if err != nil || !ok {
		return false, err
	}
	if err := rec.decode(v); err != nil {
		return false, fmt.Errorf("%s %q: %w", what, id, err)
	}
	return true, nil
}

// readNeighbors returns the committed neighbour record of item id (empty
// when it has none).
func (s *Store) readNeighbors(id string) (*neighborRecord, error) {
	r := &neighborRecord{LogMass: math.Inf(-1)}
	if _, err := readModel(s, neighborKey(id), "neighbours of", id, r); err != nil {
		return nil, err
	}
	return r, nil
}

// readUserModel returns the committed model of user id and whether it has
// one (an empty model otherwise).
func (s *Store) readUserModel(id string) (*userModel, bool, error) {
	u := new(userModel)
	found, err := readModel(s, userModelKey(id), "user model", id, u)
	if err != nil {
		return nil, false, err
	}
	return u, found, nil
}

// readItemModel returns the committed model of item id and whether it has
// one (an empty model otherwise).
func (s *Store) readItemModel(id string) (*itemModel, bool, error) {
	it := new(itemModel)
	found, err := readModel(s, itemModelKey(id), "item model", id, it)
	if err != nil {
		return nil, false, err
	}
	return it, found, nil
}

// ModelVersion names the served model: the published ranker version.
func (s *Store) ModelVersion() string {
	s.models.published.RLock()
	defer s.models.published.RUnlock()
	return fmt.Sprintf("ranker-v%d", s.models.published.version)
}

var pastTense = [numBehaviors]string{"viewed", "carted", "favorited", "bought"}

type candidate struct {
	id     string
	reason string
	// strength orders candidates within their sources, for reasons and
	// for scoring before the ranker has a published version.
	strength float64
	score    float64
}

// Recommend returns up to o.K items for user, best first. With
// MethodFull the list is never shorter than K while enough items exist
// that pass the filters.
func (s *Store) Recommend(user string, o RecommendOptions) ([]Recommendation, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	if o.Method == "" {
		o.Method = MethodFull
	}
	if o.K <= 0 {
		return nil, nil
	}
	now := s.Now()
	urec, _, err := s.User(user)
	if err != nil {
		return nil, err
	}
	um, _, err := s.readUserModel(user)
	if err != nil {
		return nil, err
	}
	// Only the methods that score by similarity to the history read the
	// history's neighbour lists; the others need the history alone (for
	// the purchase filter).
	ctx := &rankContext{now: now, user: &urec, model: um}
	if o.Method == MethodFull || o.Method == MethodItem2Item {
		if ctx, err = s.rankContextAt(nil, um, &urec, now, true); err != nil {
			return nil, err
		}
	}
	// own bounds how many of the user's own items a single source may
	// return, which the purchase filter may drop.
	own := len(um.History) + len(urec.RecentItems)
	var seen map[string]bool
	if o.ExcludeSeen {
		if seen, err = s.seenItems(user, now); err != nil {
			return nil, err
		}
		// The model history and recent items are in the seen set, except
		// for events applied before it existed (an older data dir).
		since := now - s.SeenTTL()
		for _, h := range um.History {
			if h.TS > since {
				seen[h.Item] = true
			}
		}
		for _, r := range urec.RecentItems {
			if r.TS > since {
				seen[r.ID] = true
			}
		}
	}
	hasPurchases := urec.Count[BehaviorPurchase] > 0 && !o.KeepPurchased
	items := make(map[string]*ItemRecord)
	var ferr error
	// keep reports whether item passes every filter.
	keep := func(id string) bool {
		if o.Exclude[id] || (o.ExcludeSeen && seen[id]) {
			return false
		}
		if hasPurchases {
			if h, _, ok := ctx.history(id); ok && h.Behavior == BehaviorPurchase {
				return false
			}
			if bought, err := s.Purchased(user, id); err != nil {
				ferr = err
				return false
			} else if bought {
				return false
			}
		}
		if o.Category != "" || o.Method == MethodFull {
			it, ok := items[id]
			if !ok {
				rec, found, err := s.Item(id)
				if err != nil {
					ferr = err
					return false
				}
				it = nil
				if found {
					it = &rec
				}
				items[id] = it
			}
			if o.Category != "" && (it == nil || it.CategoryID != o.Category) {
				return false
			}
			if it == nil {
				return false // expired (or never had an event)
			}
		}
		return true
	}
	// margin: how many more candidates than K a single source asks for,
	// so that filtering leaves K.
	margin := o.K + len(o.Exclude) + 20 + len(seen)
	var out []Recommendation
	switch o.Method {
	case MethodPopular:
		cands, err := s.Popular(o.Category, o.K, func(id string) bool { return !keep(id) })
		if err != nil {
			return nil, err
		}
		for _, c := range cands {
			out = append(out, Recommendation{ItemID: c.ItemID, Score: c.Score, Reason: PopularReason(o.Category)})
		}
	case MethodRecentPopular:
		cands, err := s.TopItems(o.Category, now, 3_600_000, margin, true, 0)
		if err != nil {
			return nil, err
		}
		for _, c := range cands {
			if keep(c.ItemID) {
				out = append(out, Recommendation{ItemID: c.ItemID, Score: c.Score, Reason: "trending in the last hour"})
			}
		}
	case MethodItem2Item:
		for _, c := range topOf(ctx.i2i, margin+own) {
			if keep(c.ItemID) {
				out = append(out, Recommendation{ItemID: c.ItemID, Score: c.Score, Reason: s.similarReason(ctx, c.ItemID)})
			}
		}
	case MethodMF:
		for _, c := range s.mfTop(um.Vec, margin+own) {
			if keep(c.ItemID) {
				out = append(out, Recommendation{ItemID: c.ItemID, Score: c.Score, Reason: "matches your taste profile"})
			}
		}
	case MethodUser2User:
		u2u, err := s.userToUser(user, um, margin)
		if err != nil {
			return nil, err
		}
		for _, c := range u2u {
			if keep(c.id) {
				out = append(out, Recommendation{ItemID: c.id, Score: c.strength, Reason: c.reason})
			}
		}
	case MethodFull:
		out, err = s.recommendFull(user, o, ctx, &urec, um, keep, items)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("method %q: not one of full, popular, recent_popular, item2item, mf, user2user", o.Method)
	}
	if ferr != nil {
		return nil, ferr
	}
	if len(out) > o.K {
		out = out[:o.K]
	}
	return out, nil
}

// PopularReason is the reason given for a popular item of category (""
// for all items).
func PopularReason(category string) string {
	if category != "" {
		return "popular in category " + category
	}
	return "popular now"
}

func (s *Store) similarReason(ctx *rankContext, id string) string {
	h, ok := ctx.best[id]
	if !ok {
		return "similar to items you interacted with"
	}
	return "similar to " + h.Item + " you " + pastTense[h.Behavior]
}

// recommendFull gathers candidates from every source, ranks them with the
// published ranker and fills up with popular items.
func (s *Store) recommendFull(user string, o RecommendOptions, ctx *rankContext, urec *UserRecord, um *userModel,
	keep func(string) bool, items map[string]*ItemRecord) ([]Recommendation, error) {
	cands := make(map[string]*candidate)
	// add offers a candidate from a source; rank is its position there.
	add := func(id, reason string, rank int, sourceWeight float64) {
		st := sourceWeight / float64(rank+1)
		c, ok := cands[id]
		if !ok {
			cands[id] = &candidate{id: id, reason: reason, strength: st}
			return
		}
		if st > c.strength {
			c.reason = reason
		}
		c.strength += st
	}
	for i, c := range topOf(ctx.i2i, 100) {
		add(c.ItemID, s.similarReason(ctx, c.ItemID), i, 1.0)
	}
	u2u, err := s.userToUser(user, um, 50)
	if err != nil {
		return nil, err
	}
	for i, c := range u2u {
		add(c.id, c.reason, i, 0.8)
	}
	for i, c := range s.mfTop(um.Vec, 50) {
		add(c.ItemID, "matches your taste profile", i, 0.6)
	}
	cats := make([]string, 0, 3)
	if o.Category != "" {
		cats = append(cats, o.Category)
	} else {
		aff := slices.Clone(urec.Affinities)
		slices.SortFunc(aff, func(a, b Recent) int { return cmp.Compare(b.Score, a.Score) })
		for _, a := range aff {
			if len(cats) == 3 {
				break
			}
			cats = append(cats, a.ID)
		}
	}
	for _, cat := range cats {
		pop, err := s.Popular(cat, 20, nil)
		if err != nil {
			return nil, err
		}
		for i, c := range pop {
			add(c.ItemID, "popular in category "+cat, i, 0.7)
		}
	}
	trend, err := s.trending(ctx.now)
	if err != nil {
		return nil, err
	}
	for i, c := range trend {
		add(c.ItemID, "trending in the last hour", i, 0.5)
	}
	pop, err := s.Popular("", 30, nil)
	if err != nil {
		return nil, err
	}
	for i, c := range pop {
		add(c.ItemID, "popular now", i, 0.5)
	}
	if !o.ExcludeSeen {
		for i, h := range um.History {
			add(h.Item, "you "+pastTense[h.Behavior]+" it", i, 0.9)
		}
	}

	s.models.published.RLock()
	w := s.models.published.w
	hw := s.models.published.hw
	version := s.models.published.version
	s.models.published.RUnlock()
	list := make([]*candidate, 0, len(cands))
	// The user's own items are ordered among themselves by the weights
	// plus the history weights (learned from pairs of them), shifted so
	// that their mean logit is the weights' alone: the history weights
	// reorder the user's items without moving them as a group against
	// new items, which only the pointwise weights decide.
	type ownItem struct {
		c          *candidate
		logit, adj float64
	}
	var own []ownItem
	for _, c := range cands {
		if !keep(c.id) {
			continue
		}
		if version > 0 {
			ci := candidateInfo{ID: c.id, Item: items[c.id], Vec: s.itemVec(c.id)}
			x := s.rankFeatures(ctx, &ci)
			c.score = predict(w, &x)
			if _, _, ok := ctx.history(c.id); ok && len(hw) == len(x) {
				var lg, adj float64
				for i := range x {
					lg += w[i] * x[i]
					adj += hw[i] * x[i]
				}
				own = append(own, ownItem{c, lg, adj})
			}
		} else {
			c.score = c.strength
		}
		list = append(list, c)
	}
	if len(own) > 1 {
		// Summed in item order: the same mean whatever the map's order.
		slices.SortFunc(own, func(a, b ownItem) int { return strings.Compare(a.c.id, b.c.id) })
		var mean float64
		for _, o := range own {
			mean += o.adj
		}
		mean /= float64(len(own))
		for _, o := range own {
			o.c.score = 1 / (1 + math.Exp(-max(-30, min(30, o.logit+o.adj-mean))))
		}
	}
	slices.SortFunc(list, func(a, b *candidate) int {
		if a.score != b.score {
			return cmp.Compare(b.score, a.score)
		}
		return strings.Compare(a.id, b.id)
	})
	out := make([]Recommendation, 0, o.K)
	for _, c := range list {
		if len(out) == o.K {
			break
		}
		out = append(out, Recommendation{ItemID: c.id, Score: c.score, Reason: c.reason})
	}
	// Never short while items exist: fill with popular items.
	if len(out) < o.K {
		taken := make(map[string]bool, len(out))
		for _, r := range out {
			taken[r.ItemID] = true
		}
		fill, err := s.Popular(o.Category, o.K-len(out), func(id string) bool { return taken[id] || !keep(id) })
		if err != nil {
			return nil, err
		}
		for _, c := range fill {
			out = append(out, Recommendation{ItemID: c.ItemID, Score: 0, Reason: PopularReason(o.Category)})
		}
	}
	return out, nil
}

// trending returns the 20 items with the most weighted events in the hour
// ending at now. The list is shared by every request within the same
// second of the read clock: computing it scans the hour's counts of every
// item, the largest cost of a recommendation under heavy ingest.
func (s *Store) trending(now int64) ([]Scored, error) {
	sec := now / 1000
	s.trend.Lock()
	if s.trend.sec == sec && s.trend.list != nil {
		list := s.trend.list
		s.trend.Unlock()
		return list, nil
	}
	s.trend.Unlock()
	list, err := s.TopItems("", now, 3_600_000, 20, true, 0)
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []Scored{}
	}
	s.trend.Lock()
	s.trend.sec, s.trend.list = sec, list
	s.trend.Unlock()
	return list, nil
}

// itemVec returns a copy of item id's factors, or nil.
func (s *Store) itemVec(id string) []float32 {
	m := s.models
	m.table.RLock()
	defer m.table.RUnlock()
	i, ok := m.table.idx[id]
	if !ok {
		return nil
	}
	d := m.opts.Dim
	return slices.Clone(m.table.vecs[int(i)*d : int(i+1)*d])
}

// topOf returns the k highest-scored entries of scores.
func topOf(scores map[string]float64, k int) []Scored {
	out := make([]Scored, 0, len(scores))
	for id, sc := range scores {
		if sc > 0 {
			out = append(out, Scored{ItemID: id, Score: sc})
		}
	}
	sortScored(out)
	if len(out) > k {
		out = out[:k]
	}
	return out
}

func sortScored(list []Scored) {
	slices.SortFunc(list, func(a, b Scored) int {
		if a.Score != b.Score {
			return cmp.Compare(b.Score, a.Score)
		}
		return strings.Compare(a.ItemID, b.ItemID)
	})
}

// scoredHeap is a min-heap by score (ties: larger id first out).
type scoredHeap []Scored

func (h scoredHeap) Len() int { return len(h) }
func (h scoredHeap) Less(i, j int) bool {
	if h[i].Score != h[j].Score {
		return h[i].Score < h[j].Score
	}
	return h[i].ItemID > h[j].ItemID
}
func (h scoredHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *scoredHeap) Push(x any)   { *h = append(*h, x.(Scored)) }
func (h *scoredHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// offer keeps c if it is among the k best seen so far (ties: smaller id).
func (h *scoredHeap) offer(c Scored, k int) {
	if len(*h) < k {
		heap.Push(h, c)
	} else if top := (*h)[0]; c.Score > top.Score || (c.Score == top.Score && c.ItemID < top.ItemID) {
		(*h)[0] = c
		heap.Fix(h, 0)
	}
}

// best returns what h kept, best first.
func (h scoredHeap) best() []Scored {
	out := []Scored(h)
	sortScored(out)
	return out
}

// topScored returns the k best entries of list with a positive score, best
// first (ties by id), keeping a heap of k rather than sorting everything.
func topScored(list []Scored, k int) []Scored {
	if k <= 0 {
		return nil
	}
	h := make(scoredHeap, 0, k+1)
	for _, c := range list {
		if c.Score > 0 {
			h.offer(c, k)
		}
	}
	return h.best()
}

// mfTop scores the whole catalogue by the dot product with vec and returns
// the k best.
func (s *Store) mfTop(vec []float32, k int) []Scored {
	m := s.models
	d := m.opts.Dim
	if len(vec) != d || k <= 0 {
		return nil
	}
	m.table.RLock()
	defer m.table.RUnlock()
	h := make(scoredHeap, 0, k+1)
	for i, id := range m.table.ids {
		if id == "" {
			continue
		}
		row := m.table.vecs[i*d : (i+1)*d]
		var dot float32
		for j := range row {
			dot += row[j] * vec[j]
		}
		h.offer(Scored{ItemID: id, Score: float64(dot)}, k)
	}
	return h.best()
}

// SimilarUser is a user with a similarity score.
type SimilarUser struct {
	UserID string
	Score  float64
}

// similarUsers scores users who recently interacted with the same items
// as um's history: each shared item adds the two interactions' weights
// over the log of the item's audience (popular items say less).
func (s *Store) similarUsers(user string, um *userModel, k int) ([]SimilarUser, error) {
	scores := make(map[string]float64)
	for i, h := range um.History {
		if i == historyForScoring {
			break
		}
		im, _, err := s.readItemModel(h.Item)
		if err != nil {
			return nil, err
		}
		w := s.weights[h.Behavior] / s.weights[BehaviorPurchase] / math.Log2(2+float64(len(im.Users)))
		for _, r := range im.Users {
			if r.ID != user {
				scores[r.ID] += w
			}
		}
	}
	top := topOf(scores, k)
	out := make([]SimilarUser, len(top))
	for i, t := range top {
		out[i] = SimilarUser{UserID: t.ItemID, Score: t.Score}
	}
	return out, nil
}

// SimilarUsers returns up to k users whose recent behavior is most like
// user's.
func (s *Store) SimilarUsers(user string, k int) ([]SimilarUser, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	um, _, err := s.readUserModel(user)
	if err != nil {
		return nil, err
	}
	return s.similarUsers(user, um, k)
}

// userToUser returns the items similar users interacted with, strongest
// behavior first, as candidates ("users like you bought").
func (s *Store) userToUser(user string, um *userModel, k int) ([]candidate, error) {
	sims, err := s.similarUsers(user, um, 10)
	if err != nil {
		return nil, err
	}
	type acc struct {
		score float64
		beh   Behavior
	}
	scores := make(map[string]*acc)
	for _, su := range sims {
		vm, _, err := s.readUserModel(su.UserID)
		if err != nil {
			return nil, err
		}
		for i, h := range vm.History {
			if i == historyForScoring {
				break
			}
			if _, mine := userHas(um, h.Item); mine {
				continue
			}
			a, ok := scores[h.Item]
			if !ok {
				a = &acc{beh: h.Behavior}
				scores[h.Item] = a
			}
			a.score += su.Score * s.weights[h.Behavior] / s.weights[BehaviorPurchase]
			a.beh = strongest(a.beh, h.Behavior)
		}
	}
	out := make([]candidate, 0, len(scores))
	for id, a := range scores {
		out = append(out, candidate{id: id, strength: a.score, reason: "users like you " + pastTense[a.beh] + " it"})
	}
	slices.SortFunc(out, func(a, b candidate) int {
		if a.strength != b.strength {
			return cmp.Compare(b.strength, a.strength)
		}
		return strings.Compare(a.id, b.id)
	})
	if len(out) > k {
		out = out[:k]
	}
	return out, nil
}

func userHas(um *userModel, item string) (histEntry, bool) {
	for _, h := range um.History {
		if h.Item == item {
			return h, true
		}
	}
	return histEntry{}, false
}

// Neighbor is an item's neighbour with its similarity.
type Neighbor struct {
	ItemID string
	Score  float64
}

// Neighbors returns up to k neighbours of item by similarity as of the
// read clock (at most ModelOptions.Neighbors).
func (s *Store) Neighbors(item string, k int) ([]Neighbor, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	r, err := s.readNeighbors(item)
	if err != nil {
		return nil, err
	}
	k = min(k, s.models.opts.Neighbors)
	return s.rankNeighbors(r, s.Now(), k), nil
}

func (s *Store) rankNeighbors(r *neighborRecord, now int64, k int) []Neighbor {
	fwd := float64(now) / s.models.decayMS
	list := make([]Scored, 0, len(r.List))
	for i := range r.List {
		list = append(list, Scored{ItemID: r.List[i].ID, Score: r.sim(&r.List[i], fwd, s.models.opts.Shrinkage)})
	}
	sortScored(list)
	if len(list) > k {
		list = list[:k]
	}
	out := make([]Neighbor, len(list))
	for i, c := range list {
		out[i] = Neighbor{ItemID: c.ItemID, Score: c.Score}
	}
	return out
}

// SimilarItems returns up to k items like item, with reasons: its
// neighbours, then (for items with few or none) popular items of its
// category and overall.
func (s *Store) SimilarItems(item string, k int) ([]Recommendation, error) {
	ns, err := s.Neighbors(item, k)
	if err != nil {
		return nil, err
	}
	out := make([]Recommendation, 0, k)
	taken := map[string]bool{item: true}
	for _, n := range ns {
		// Neighbour lists may still name an expired item until its pair is
		// pruned: skip items without a record.
		if _, found, err := s.Item(n.ItemID); err != nil {
			return nil, err
		} else if !found {
			continue
		}
		out = append(out, Recommendation{ItemID: n.ItemID, Score: n.Score, Reason: "often together with " + item})
		taken[n.ItemID] = true
	}
	if len(out) < k {
		rec, found, err := s.Item(item)
		if err != nil {
			return nil, err
		}
		cats := []string{""}
		if found && rec.CategoryID != "" {
			cats = []string{rec.CategoryID, ""}
		}
		for _, cat := range cats {
			if len(out) >= k {
				break
			}
			pop, err := s.Popular(cat, k-len(out), func(id string) bool { return taken[id] })
			if err != nil {
				return nil, err
			}
			for _, c := range pop {
				out = append(out, Recommendation{ItemID: c.ItemID, Score: 0, Reason: PopularReason(cat)})
				taken[c.ItemID] = true
			}
		}
	}
	return out, nil
}

// ModelInfo describes one model's state.
type ModelInfo struct {
	Name     string
	Version  int64
	Examples int64   // examples (events or ranker examples) learned
	AUC      float64 // rolling AUC (ranker only; NaN otherwise)
	LogLoss  float64
	// PublishedAUC is the rolling AUC of the published weights on the
	// same window (ranker only).
	PublishedAUC     float64
	PublishedLogLoss float64
	LastEventTS      int64 // event time of the last update, Unix ms
	Frozen           bool
}

// Models describes every model.
func (s *Store) Models() ([]ModelInfo, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	var meta modelMeta
	meta.Ranker.init(numRankFeatures)
	v, ok, err := s.get([]byte(keyModels))
	if err != nil {
		return nil, err
	}
	if ok {
		if err := meta.decode(v); err != nil {
			return nil, fmt.Errorf("%s: %w", keyModels, err)
		}
	}
	frozen := s.modelsFrozen.Load()
	nan := math.NaN()
	auc, ll := windowMetrics(meta.Ranker.Train, meta.Ranker.Labels)
	pauc, pll := windowMetrics(meta.Ranker.Pub, meta.Ranker.Labels)
	return []ModelInfo{
		{Name: "item2item", Version: meta.Learned, Examples: meta.Pairs, AUC: nan, LogLoss: nan, PublishedAUC: nan, PublishedLogLoss: nan, LastEventTS: meta.LastTS, Frozen: frozen},
		{Name: "user2user", Version: meta.Learned, Examples: meta.Learned, AUC: nan, LogLoss: nan, PublishedAUC: nan, PublishedLogLoss: nan, LastEventTS: meta.LastTS, Frozen: frozen},
		{Name: "mf", Version: meta.Learned, Examples: meta.Learned, AUC: nan, LogLoss: nan, PublishedAUC: nan, PublishedLogLoss: nan, LastEventTS: meta.LastTS, Frozen: frozen},
		{Name: "ranker", Version: meta.Ranker.Version, Examples: meta.Ranker.Examples, AUC: auc, LogLoss: ll, PublishedAUC: pauc, PublishedLogLoss: pll, LastEventTS: meta.Ranker.LastTS, Frozen: frozen},
	}, nil
}

// RankerWeights returns the ranker's feature names, its published weights
// and their version.
func (s *Store) RankerWeights() (names []string, weights []float64, version int64) {
	s.models.published.RLock()
	defer s.models.published.RUnlock()
	return RankFeatureNames(), slices.Clone(s.models.published.w), s.models.published.version
}

// RankerHistoryWeights returns the published history weights (added to
// the weights among the user's own items; see learnHistoryPairs), by
// feature like RankerWeights, of the same version.
func (s *Store) RankerHistoryWeights() []float64 {
	s.models.published.RLock()
	defer s.models.published.RUnlock()
	return slices.Clone(s.models.published.hw)
}

// HistoryEntry is one item of a user's model history: the distinct items
// the recommendations and their reasons are built from.
type HistoryEntry struct {
	ItemID     string
	CategoryID string   // the item's category now; "" when it has none (or expired)
	Behavior   Behavior // strongest behavior with the item
	TS         int64    // newest event time with the item (Unix ms)
	Events     int      // events with the item (saturates at 255)
}

// UserHistory returns up to limit items of user's model history, newest
// first (at most models.history-cap distinct items are kept). An unknown
// user has none.
func (s *Store) UserHistory(user string, limit int) ([]HistoryEntry, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	um, _, err := s.readUserModel(user)
	if err != nil {
		return nil, err
	}
	n := min(limit, len(um.History))
	out := make([]HistoryEntry, 0, n)
	for _, h := range um.History[:n] {
		e := HistoryEntry{ItemID: h.Item, Behavior: h.Behavior, TS: h.TS, Events: int(h.Count)}
		it, found, err := s.Item(h.Item)
		if err != nil {
			return nil, err
		}
		if found {
			e.CategoryID = it.CategoryID
		}
		out = append(out, e)
	}
	return out, nil
}
