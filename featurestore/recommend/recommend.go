package recommend

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
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

// Recommender answers recommendation requests from a store's committed
// state and the models that learn in it. Safe for concurrent use.
type Recommender struct {
	st *featurestore.Store
	m  *models.Models
	// trend caches the hour's trending items for a second of the read
	// clock (see trending).
	trend struct {
		sync.Mutex
		sec  int64
		list []featurestore.Scored
	}
	// contexts holds the ranking contexts (with neighbours) of the last
	// requests by user, state version and read clock: requests for one
	// user within one version (another method, filter or length, as an
	// evaluation asks them) share the context, a quarter of the CPU of a
	// recommendation. A context is immutable once built.
	contexts *lru.Cache[contextKey, *models.Context]
}

type contextKey struct {
	user string
	seq  uint64
	now  int64
}

// contextsCached bounds Recommender.contexts: a context holds the sums
// over its history's neighbours, up to about 200 KB.
const contextsCached = 32

// New returns the recommender over st and its models m (the store's
// Options.Learner).
func New(st *featurestore.Store, m *models.Models) *Recommender {
	c, _ := lru.New[contextKey, *models.Context](contextsCached)
	return &Recommender{st: st, m: m, contexts: c}
}

// context returns the ranking context of user (model um, record urec) in
// version s at now (see models.Context), from the cache when neighbours
// are wanted.
func (r *Recommender) context(s *featurestore.Version, user string, um *models.User, urec *featurestore.UserRecord, now int64, neighbours bool) (*models.Context, error) {
	if !neighbours {
		return r.m.Context(s, um, urec, now, false)
	}
	k := contextKey{user, s.Seq(), now}
	if ctx, ok := r.contexts.Get(k); ok {
		return ctx, nil
	}
	ctx, err := r.m.Context(s, um, urec, now, true)
	if err != nil {
		return nil, err
	}
	r.contexts.Add(k, ctx)
	return ctx, nil
}

// Options says what Recommend returns.
type Options struct {
	K           int
	Category    string          // only items of this category; "" for all
	Exclude     map[string]bool // never these items
	ExcludeSeen bool            // drop every item the user touched within the store's SeenTTL
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

var pastTense = [...]string{"viewed", "carted", "favorited", "bought"}

// candidatesHint is about how many candidates a full recommendation
// gathers (up to 100 similar items, 50 of similar users, 50 of MF, 60 of
// the categories, trending, 30 popular and the history), to size its maps.
const candidatesHint = 384

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
func (r *Recommender) Recommend(user string, o Options) ([]Recommendation, error) {
	m := r.m
	if o.Method == "" {
		o.Method = MethodFull
	}
	if o.K <= 0 {
		return nil, nil
	}
	// Every read of the request is of one state version.
	s, err := r.st.Pin()
	if err != nil {
		return nil, err
	}
	defer s.Release()
	now := s.Now()
	urec, _, err := s.User(user)
	if err != nil {
		return nil, err
	}
	um, _, err := m.User(s, user)
	if err != nil {
		return nil, err
	}
	// Only the methods that score by similarity to the history read the
	// history's neighbour lists; the others need the history alone (for
	// the purchase filter).
	ctx, err := r.context(s, user, um, &urec, now, o.Method == MethodFull || o.Method == MethodItem2Item)
	if err != nil {
		return nil, err
	}
	// own bounds how many of the user's own items a single source may
	// return, which the purchase filter may drop.
	own := len(um.History) + len(urec.RecentItems)
	var seen map[string]bool
	if o.ExcludeSeen {
		if seen, err = s.SeenItems(user, now); err != nil {
			return nil, err
		}
		// The model history and recent items are in the seen set, except
		// for events applied before it existed (an older data dir).
		since := now - r.st.SeenTTL()
		for _, h := range um.History {
			if h.TS > since {
				seen[h.Item] = true
			}
		}
		for _, ri := range urec.RecentItems {
			if ri.TS > since {
				seen[ri.ID] = true
			}
		}
	}
	hasPurchases := urec.Count[featurestore.BehaviorPurchase] > 0 && !o.KeepPurchased
	// The user's purchases in one scan, unless there are very many (then
	// each candidate is looked up).
	var bought map[string]bool
	boughtAll := false
	if hasPurchases {
		if bought, boughtAll, err = s.PurchasedItems(user, maxPurchasesScanned); err != nil {
			return nil, err
		}
	}
	items := make(map[string]*featurestore.ItemRecord, candidatesHint)
	var ferr error
	// keep reports whether item passes every filter.
	keep := func(id string) bool {
		if o.Exclude[id] || (o.ExcludeSeen && seen[id]) {
			return false
		}
		if hasPurchases {
			if h, _, ok := ctx.History(id); ok && h.Behavior == featurestore.BehaviorPurchase {
				return false
			}
			if boughtAll {
				if bought[id] {
					return false
				}
			} else if b, err := s.Purchased(user, id); err != nil {
				ferr = err
				return false
			} else if b {
				return false
			}
		}
		if o.Category != "" || o.Method == MethodFull {
			it, ok := items[id]
			if !ok {
				var err error
				if it, err = s.ItemRef(id); err != nil {
					ferr = err
					return false
				}
				items[id] = it // shared: never modified
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
		for _, c := range ctx.TopSimilar(margin + own) {
			if keep(c.ItemID) {
				out = append(out, Recommendation{ItemID: c.ItemID, Score: c.Score, Reason: similarReason(ctx, c.ItemID)})
			}
		}
	case MethodMF:
		for _, c := range m.MFTop(um.Vec, margin+own) {
			if keep(c.ItemID) {
				out = append(out, Recommendation{ItemID: c.ItemID, Score: c.Score, Reason: "matches your taste profile"})
			}
		}
	case MethodUser2User:
		u2u, err := r.userToUser(s, user, um, margin)
		if err != nil {
			return nil, err
		}
		for _, c := range u2u {
			if keep(c.id) {
				out = append(out, Recommendation{ItemID: c.id, Score: c.strength, Reason: c.reason})
			}
		}
	case MethodFull:
		out, err = r.recommendFull(s, user, o, ctx, &urec, um, keep, items)
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

// maxPurchasesScanned is how many purchases of a user a recommendation
// reads in one scan; past it each candidate is looked up on its own.
const maxPurchasesScanned = 4096

// PopularReason is the reason given for a popular item of category (""
// for all items).
func PopularReason(category string) string {
	if category != "" {
		return "popular in category " + category
	}
	return "popular now"
}

func similarReason(ctx *models.Context, id string) string {
	h, ok := ctx.Because(id)
	if !ok {
		return "similar to items you interacted with"
	}
	return "similar to " + h.Item + " you " + pastTense[h.Behavior]
}

// recommendFull gathers candidates from every source, ranks them with the
// published ranker and fills up with popular items.
func (r *Recommender) recommendFull(s *featurestore.Version, user string, o Options, ctx *models.Context, urec *featurestore.UserRecord, um *models.User,
	keep func(string) bool, items map[string]*featurestore.ItemRecord) ([]Recommendation, error) {
	m := r.m
	// The candidates in the order first offered, indexed by id: about 300
	// of them, in one slice instead of an allocation each.
	cands := make([]candidate, 0, candidatesHint)
	at := make(map[string]int32, candidatesHint)
	// add offers a candidate from a source; rank is its position there.
	add := func(id, reason string, rank int, sourceWeight float64) {
		st := sourceWeight / float64(rank+1)
		i, ok := at[id]
		if !ok {
			at[id] = int32(len(cands))
			cands = append(cands, candidate{id: id, reason: reason, strength: st})
			return
		}
		c := &cands[i]
		if st > c.strength {
			c.reason = reason
		}
		c.strength += st
	}
	for i, c := range ctx.TopSimilar(100) {
		add(c.ItemID, similarReason(ctx, c.ItemID), i, 1.0)
	}
	u2u, err := r.userToUser(s, user, um, 50)
	if err != nil {
		return nil, err
	}
	for i, c := range u2u {
		add(c.id, c.reason, i, 0.8)
	}
	for i, c := range m.MFTop(um.Vec, 50) {
		add(c.ItemID, "matches your taste profile", i, 0.6)
	}
	cats := make([]string, 0, 3)
	if o.Category != "" {
		cats = append(cats, o.Category)
	} else {
		aff := slices.Clone(urec.Affinities)
		slices.SortFunc(aff, func(a, b featurestore.Recent) int { return cmp.Compare(b.Score, a.Score) })
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
	trend, err := r.trending(s, ctx.Now())
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

	ranker := m.Ranker()
	list := make([]*candidate, 0, len(cands))
	for i := range cands {
		if keep(cands[i].id) {
			list = append(list, &cands[i])
		}
	}
	if ranker.Version() > 0 {
		ids := make([]string, len(list))
		for i, c := range list {
			ids[i] = c.id
		}
		for i, sc := range ranker.ScoreAll(ctx, ids, items) {
			list[i].score = sc
		}
	} else {
		for _, c := range list {
			c.score = c.strength
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
		for _, rec := range out {
			taken[rec.ItemID] = true
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

// trendingK is the length of the trending list.
const trendingK = 20

// trending returns the trendingK items with the most weighted events in
// the hour ending at now: the version's own, from the store's trending
// index, when the index holds that hour (the hour of the version's read
// clock, as it does but for the first moments of an hour under a wall
// clock). Otherwise the list is computed from the hourly counts and shared
// by every request within the same second of the read clock: computing it
// scans the hour's counts of every item, the largest cost of a
// recommendation under heavy ingest, and that list may be of an older
// version than the rest (by less than a second of the clock).
func (r *Recommender) trending(v *featurestore.Version, now int64) ([]featurestore.Scored, error) {
	if list, ok := v.Trending(now, trendingK); ok {
		return list, nil // the version's own, from the store's index
	}
	sec := now / 1000
	r.trend.Lock()
	if r.trend.sec == sec && r.trend.list != nil {
		list := r.trend.list
		r.trend.Unlock()
		return list, nil
	}
	r.trend.Unlock()
	list, err := v.TopItems("", now, 3_600_000, trendingK, true, 0)
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []featurestore.Scored{}
	}
	r.trend.Lock()
	r.trend.sec, r.trend.list = sec, list
	r.trend.Unlock()
	return list, nil
}

// topOf returns the k highest-scored entries of scores with a positive
// score, best first (ties by id).
func topOf(scores map[string]float64, k int) []featurestore.Scored {
	list := make([]featurestore.Scored, 0, len(scores))
	for id, sc := range scores {
		list = append(list, featurestore.Scored{ItemID: id, Score: sc})
	}
	return featurestore.TopScored(list, k)
}

// SimilarUser is a user with a similarity score.
type SimilarUser struct {
	UserID string
	Score  float64
}

// similarUsers scores users who recently interacted with the same items
// as um's history: each shared item adds the two interactions' weights
// over the log of the item's audience (popular items say less).
func (r *Recommender) similarUsers(v *featurestore.Version, user string, um *models.User, k int) ([]SimilarUser, error) {
	scores := make(map[string]float64)
	for i, h := range um.History {
		if i == models.HistoryForScoring {
			break
		}
		im, _, err := r.m.Item(v, h.Item)
		if err != nil {
			return nil, err
		}
		w := r.m.Weight(h.Behavior) / math.Log2(2+float64(len(im.Users)))
		for _, u := range im.Users {
			if u.ID != user {
				scores[u.ID] += w
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
func (r *Recommender) SimilarUsers(user string, k int) ([]SimilarUser, error) {
	v, err := r.st.Pin()
	if err != nil {
		return nil, err
	}
	defer v.Release()
	um, _, err := r.m.User(v, user)
	if err != nil {
		return nil, err
	}
	return r.similarUsers(v, user, um, k)
}

// userToUser returns the items similar users interacted with, strongest
// behavior first, as candidates ("users like you bought").
func (r *Recommender) userToUser(v *featurestore.Version, user string, um *models.User, k int) ([]candidate, error) {
	sims, err := r.similarUsers(v, user, um, 10)
	if err != nil {
		return nil, err
	}
	type acc struct {
		score float64
		beh   featurestore.Behavior
	}
	mine := make(map[string]bool, len(um.History))
	for _, h := range um.History {
		mine[h.Item] = true
	}
	// The items of the similar users in the order first met, indexed by id.
	accs := make([]acc, 0, len(sims)*models.HistoryForScoring)
	at := make(map[string]int32, len(sims)*models.HistoryForScoring)
	ids := make([]string, 0, len(sims)*models.HistoryForScoring)
	for _, su := range sims {
		vm, _, err := r.m.User(v, su.UserID)
		if err != nil {
			return nil, err
		}
		for i, h := range vm.History {
			if i == models.HistoryForScoring {
				break
			}
			if mine[h.Item] {
				continue
			}
			k, ok := at[h.Item]
			if !ok {
				k = int32(len(accs))
				at[h.Item] = k
				accs = append(accs, acc{beh: h.Behavior})
				ids = append(ids, h.Item)
			}
			a := &accs[k]
			a.score += su.Score * r.m.Weight(h.Behavior)
			a.beh = models.Strongest(a.beh, h.Behavior)
		}
	}
	out := make([]candidate, len(accs))
	for k, a := range accs {
		out[k] = candidate{id: ids[k], strength: a.score}
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
	for i := range out {
		out[i].reason = "users like you " + pastTense[accs[at[out[i].id]].beh] + " it"
	}
	return out, nil
}

// SimilarItems returns up to k items like item, with reasons: its
// neighbours, then (for items with few or none) popular items of its
// category and overall.
func (r *Recommender) SimilarItems(item string, k int) ([]Recommendation, error) {
	s, err := r.st.Pin()
	if err != nil {
		return nil, err
	}
	defer s.Release()
	ns, err := r.m.Neighbors(s, item, k)
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

// HistoryEntry is one item of a user's model history: the distinct items
// the recommendations and their reasons are built from.
type HistoryEntry struct {
	ItemID     string
	CategoryID string                // the item's category now; "" when it has none (or expired)
	Behavior   featurestore.Behavior // strongest behavior with the item
	TS         int64                 // newest event time with the item (Unix ms)
	Events     int                   // events with the item (saturates at 255)
}

// UserHistory returns up to limit items of user's model history, newest
// first (at most models.history-cap distinct items are kept). An unknown
// user has none.
func (r *Recommender) UserHistory(user string, limit int) ([]HistoryEntry, error) {
	v, err := r.st.Pin()
	if err != nil {
		return nil, err
	}
	defer v.Release()
	um, _, err := r.m.User(v, user)
	if err != nil {
		return nil, err
	}
	n := min(limit, len(um.History))
	out := make([]HistoryEntry, 0, n)
	for _, h := range um.History[:n] {
		e := HistoryEntry{ItemID: h.Item, Behavior: h.Behavior, TS: h.TS, Events: int(h.Count)}
		it, found, err := v.Item(h.Item)
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
