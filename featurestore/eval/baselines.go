package eval

import (
	"cmp"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/streamrec/recsys/featurestore"
)

// BaselineOptions are the hyperparameters of the baselines a practitioner
// would build in an afternoon. The defaults were chosen once on the Taobao
// users sample (UserBehavior-users-84k) and are not tuned per data set.
type BaselineOptions struct {
	// Rebuild is how much event time passes between two rebuilds of the
	// item-kNN and ALS models (they see every event up to the rebuild;
	// the user's own history used to score is always current). Default 24h.
	Rebuild time.Duration
	// KNNNeighbors is how many neighbours each item keeps. Default 100.
	KNNNeighbors int
	// History is how many of a user's newest distinct items the baselines
	// learn from and score with (bounds the cost of very long
	// histories). Default 200.
	History int
	// ALSFactors, ALSIterations, ALSReg and ALSAlpha: implicit-feedback
	// ALS (Hu, Koren and Volinsky 2008) with confidence 1 + alpha·r,
	// solved by conjugate gradient (ALSCGSteps steps per vector, Takács
	// et al. 2011). Defaults 32, 10, 1, 40 and 3 (alpha 40 scored NDCG@10 0.026 in
	// re-engagement on the users sample, alpha 10 0.020, alpha 1 0.007; the
	// penalty and 64 factors changed it by less than 0.001).
	ALSFactors    int
	ALSIterations int
	ALSReg        float64
	ALSAlpha      float64
	ALSCGSteps    int
}

// EnsureDefaults fills in zero fields with their defaults.
func (o *BaselineOptions) EnsureDefaults() {
	if o.Rebuild <= 0 {
		o.Rebuild = 24 * time.Hour
	}
	setInt := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setInt(&o.KNNNeighbors, 100)
	setInt(&o.History, 200)
	setInt(&o.ALSFactors, 32)
	setInt(&o.ALSIterations, 10)
	setInt(&o.ALSCGSteps, 3)
	if o.ALSReg <= 0 {
		o.ALSReg = 1
	}
	if o.ALSAlpha <= 0 {
		o.ALSAlpha = 40
	}
}

// behaviorWeight is the strength of an interaction, as the store's
// popularity weighs it: view 1, fav 2, cart 3, purchase 4.
func behaviorWeight(b featurestore.Behavior) float32 {
	switch b {
	case featurestore.BehaviorFav:
		return 2
	case featurestore.BehaviorCart:
		return 3
	case featurestore.BehaviorPurchase:
		return 4
	}
	return 1
}

// interaction is one distinct item of a user's history.
type interaction struct {
	item int32
	w    float32 // summed behaviour weights
	last int64   // sequence number of the newest event on it
}

// userHistory is every item a user touched, exactly (the evaluation keeps
// whole histories; the store's model history is capped).
type userHistory struct {
	pos    map[int32]int // item -> index in items
	items  []interaction
	bought map[int32]bool // items the user purchased (nil: none)
}

// histories holds the users' histories with dense item ids.
type histories struct {
	itemIDs map[string]int32
	names   []string
	users   map[string]*userHistory
	seq     int64
}

func newHistories() *histories {
	return &histories{itemIDs: make(map[string]int32), users: make(map[string]*userHistory)}
}

func (h *histories) itemID(id string) int32 {
	if i, ok := h.itemIDs[id]; ok {
		return i
	}
	i := int32(len(h.names))
	h.itemIDs[id] = i
	h.names = append(h.names, id)
	return i
}

func (h *histories) add(ev *featurestore.Event) {
	h.seq++
	it := h.itemID(ev.ItemID)
	u := h.users[ev.UserID]
	if u == nil {
		u = &userHistory{pos: make(map[int32]int)}
		h.users[ev.UserID] = u
	}
	if ev.Behavior == featurestore.BehaviorPurchase {
		if u.bought == nil {
			u.bought = make(map[int32]bool)
		}
		u.bought[it] = true
	}
	if p, ok := u.pos[it]; ok {
		u.items[p].w += behaviorWeight(ev.Behavior)
		u.items[p].last = h.seq
		return
	}
	u.pos[it] = len(u.items)
	u.items = append(u.items, interaction{item: it, w: behaviorWeight(ev.Behavior), last: h.seq})
}

// newest returns up to n of the user's items, newest first (a new slice).
func (u *userHistory) newest(n int) []interaction {
	out := slices.Clone(u.items)
	slices.SortFunc(out, func(a, b interaction) int { return cmp.Compare(b.last, a.last) })
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// strength maps a summed weight to the rating the models learn from: a
// log damps users who view one item fifty times.
func strength(w float32) float32 { return float32(math.Log1p(float64(w))) }

// scoredItem is an item with a score, for top-K selection.
type scoredItem struct {
	item  int32
	score float32
}

// topK returns the k best items of cands by score (ties by item id),
// skipping those for which skip returns true.
func topK(cands []scoredItem, k int, skip func(int32) bool) []int32 {
	top := topScored(cands, k, skip)
	out := make([]int32, len(top))
	for i, c := range top {
		out[i] = c.item
	}
	return out
}

// topScored is topK with the scores. It keeps a min-heap of the k best,
// so selecting from a whole catalogue costs O(n log k).
func topScored(cands []scoredItem, k int, skip func(int32) bool) []scoredItem {
	if k <= 0 {
		return nil
	}
	// worse reports whether a ranks below b.
	worse := func(a, b scoredItem) bool {
		if a.score != b.score {
			return a.score < b.score
		}
		return a.item > b.item
	}
	h := make([]scoredItem, 0, k)
	down := func(i int) {
		for {
			l, m := 2*i+1, i
			if l < len(h) && worse(h[l], h[m]) {
				m = l
			}
			if r := l + 1; r < len(h) && worse(h[r], h[m]) {
				m = r
			}
			if m == i {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for _, c := range cands {
		if len(h) == k && !worse(h[0], c) {
			continue
		}
		if skip != nil && skip(c.item) {
			continue
		}
		if len(h) < k {
			h = append(h, c)
			for i := len(h) - 1; i > 0; {
				p := (i - 1) / 2
				if !worse(h[i], h[p]) {
					break
				}
				h[i], h[p] = h[p], h[i]
				i = p
			}
			continue
		}
		h[0] = c
		down(0)
	}
	slices.SortFunc(h, func(a, b scoredItem) int {
		switch {
		case worse(b, a):
			return -1
		case worse(a, b):
			return 1
		}
		return 0
	})
	return h
}

// itemKNN is item-kNN with cosine similarity over strength-weighted user
// histories (Sarwar et al. 2001, Deshpande and Karypis 2004), rebuilt
// from scratch at every rebuild.
type itemKNN struct {
	o         *BaselineOptions
	neighbors [][]scoredItem // by item id; nil for items unseen at the build
	acc       []float32      // scratch, by item id
	touched   []int32
}

// build recomputes every item's neighbours from the histories. Items are
// independent given the histories, so they are split between one worker
// per CPU, each with its own scratch: the lists do not depend on the split.
func (m *itemKNN) build(h *histories) {
	n := len(h.names)
	type ur struct {
		id int32 // a user (itemUsers) or an item (userItems)
		r  float32
	}
	itemUsers := make([][]ur, n)
	userItems := make([][]ur, 0, len(h.users))
	for _, u := range sortedUsers(h) {
		items := u.newest(m.o.History)
		ui := int32(len(userItems))
		rs := make([]ur, len(items))
		for k, it := range items {
			rs[k] = ur{it.item, strength(it.w)}
			itemUsers[it.item] = append(itemUsers[it.item], ur{ui, rs[k].r})
		}
		userItems = append(userItems, rs)
	}
	norm := make([]float64, n)
	for i, us := range itemUsers {
		var s float64
		for _, x := range us {
			s += float64(x.r) * float64(x.r)
		}
		norm[i] = math.Sqrt(s)
	}
	m.neighbors = make([][]scoredItem, n)
	workers := min(runtime.GOMAXPROCS(0), max(1, n/1024))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acc := make([]float64, n)
			var touched []int32
			for i := w; i < n; i += workers {
				us := itemUsers[i]
				if len(us) == 0 {
					continue
				}
				touched = touched[:0]
				for _, x := range us {
					for _, it := range userItems[x.id] {
						j := it.id
						if int(j) == i {
							continue
						}
						if acc[j] == 0 {
							touched = append(touched, j)
						}
						acc[j] += float64(x.r) * float64(it.r)
					}
				}
				cands := make([]scoredItem, 0, len(touched))
				for _, j := range touched {
					cands = append(cands, scoredItem{j, float32(acc[j] / (norm[i] * norm[j]))})
					acc[j] = 0
				}
				m.neighbors[i] = topScored(cands, m.o.KNNNeighbors, nil)
			}
		}()
	}
	wg.Wait()
}

// scores adds up, for every item, the similarity to the user's newest
// items weighted by their strength.
func (m *itemKNN) scores(u *userHistory, nItems int) []scoredItem {
	if len(m.acc) < nItems {
		m.acc = append(m.acc, make([]float32, nItems-len(m.acc))...)
	}
	m.touched = m.touched[:0]
	for _, it := range u.newest(m.o.History) {
		if int(it.item) >= len(m.neighbors) {
			continue
		}
		r := strength(it.w)
		for _, nb := range m.neighbors[it.item] {
			if m.acc[nb.item] == 0 {
				m.touched = append(m.touched, nb.item)
			}
			m.acc[nb.item] += r * nb.score
		}
	}
	out := make([]scoredItem, 0, len(m.touched))
	for _, j := range m.touched {
		out = append(out, scoredItem{j, m.acc[j]})
		m.acc[j] = 0
	}
	return out
}

// sortedUsers returns the histories in user id order, so that builds are
// deterministic.
func sortedUsers(h *histories) []*userHistory {
	ids := make([]string, 0, len(h.users))
	for id := range h.users {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*userHistory, len(ids))
	for i, id := range ids {
		out[i] = h.users[id]
	}
	return out
}
