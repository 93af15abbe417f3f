package models

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/readcache"
)

// The models' read side: committed records and the in-memory tables, for
// recommendations (featurestore/recommend) and the model tables of Flight.

// readModel decodes the committed record at key into rec and reports
// whether there was one; what names the record in errors.
func readModel[T interface{ decode([]byte) error }](src featurestore.Reader, key []byte, what, id string, rec T) (bool, error) {
	v, ok, err := src.ReadKey(key)
	if err != nil || !ok {
		return false, err
	}
	if err := rec.decode(v); err != nil {
		return false, fmt.Errorf("%s %q: %w", what, id, err)
	}
	return true, nil
}

// readNeighbors returns the neighbour record of item id in src (empty
// when it has none).
// The record is shared with other readers through the read cache: it
// must not be modified.
func (m *Models) readNeighbors(src featurestore.Reader, id string) (*neighborRecord, error) {
	r, ok, gen := m.reads.Get(id)
	if ok {
		return r, nil
	}
	r = &neighborRecord{LogMass: math.Inf(-1)}
	if _, err := readModel(src, neighborKey(id), "neighbours of", id, r); err != nil {
		return nil, err
	}
	r.find("") // builds the index now: find only reads it from here on
	m.reads.Put(id, r, gen)
	return r, nil
}

// readModelEntries bounds the readers' caches of user and item models
// (about 4 KB per user and item at most: 64 MiB in all).
const readModelEntries = 16 << 10

// User returns the model of user id in src (the store, or one pinned
// version of it) and whether it has one (an empty model otherwise). The
// model is shared with other readers through the read cache: it must not
// be modified.
func (m *Models) User(src featurestore.Reader, id string) (*User, bool, error) {
	return cachedModel(m.userReads, src, userModelKey(id), "user model", id)
}

// readUser is User without the cache: a model of its own, which the
// writer modifies.
func (m *Models) readUser(src featurestore.Reader, id string) (*User, bool, error) {
	return newModel[User](src, userModelKey(id), "user model", id)
}

// Item returns the model of item id in src and whether it has one (an
// empty model otherwise). Like User's, it must not be modified.
func (m *Models) Item(src featurestore.Reader, id string) (*Item, bool, error) {
	return cachedModel(m.itemReads, src, itemModelKey(id), "item model", id)
}

// readItem is Item without the cache (see readUser).
func (m *Models) readItem(src featurestore.Reader, id string) (*Item, bool, error) {
	return newModel[Item](src, itemModelKey(id), "item model", id)
}

// model is a model record type: T whose pointer decodes.
type model[T any] interface {
	*T
	decode([]byte) error
}

// newModel decodes the record at key in src into a new T (empty when
// there is none) and reports whether there was one.
func newModel[T any, P model[T]](src featurestore.Reader, key []byte, what, id string) (P, bool, error) {
	rec := P(new(T))
	found, err := readModel(src, key, what, id, rec)
	if err != nil {
		return nil, false, err
	}
	return rec, found, nil
}

// cachedModel is newModel through the readers' cache c, which holds
// misses too (as nil); the record returned is shared.
func cachedModel[T any, P model[T]](c *readcache.Cache[P], src featurestore.Reader, key []byte, what, id string) (P, bool, error) {
	rec, ok, gen := c.Get(id)
	if !ok {
		var found bool
		var err error
		if rec, found, err = newModel[T, P](src, key, what, id); err != nil {
			return nil, false, err
		}
		if !found {
			rec = nil
		}
		c.Put(id, rec, gen)
	}
	if rec == nil {
		return P(new(T)), false, nil
	}
	return rec, true, nil
}

// Weight is the behavior weight of b relative to a purchase's (the
// store's Definitions.BehaviorWeights).
func (m *Models) Weight(b featurestore.Behavior) float64 {
	return m.weights[b] / m.weights[featurestore.BehaviorPurchase]
}

// Version names the served model: the published ranker version.
func (m *Models) Version() string {
	m.published.RLock()
	defer m.published.RUnlock()
	return fmt.Sprintf("ranker-v%d", m.published.version)
}

// Ranker is the published ranker as of one moment (Models.Ranker).
type Ranker struct {
	m       *Models
	w, hw   []float64 // the weights and the history weights
	version int64
}

// Ranker returns the published ranker.
func (m *Models) Ranker() Ranker {
	m.published.RLock()
	defer m.published.RUnlock()
	return Ranker{m: m, w: m.published.w, hw: m.published.hw, version: m.published.version}
}

// Version is the ranker's published version; 0 before the first
// publication (all weights zero).
func (r Ranker) Version() int64 { return r.version }

// ScoreAll scores the candidates ids (items: their feature records) of
// one list in ctx, from the same features the ranker learns from. The user's own items among them are scored by the
// weights plus the history weights, shifted so that their mean logit is
// the weights' alone: the history weights (learned from pairs of the
// user's items) reorder the user's items without moving them as a group
// against new items, which the pointwise weights alone decide.
func (r Ranker) ScoreAll(ctx *Context, ids []string, items map[string]*featurestore.ItemRecord) []float64 {
	scores := make([]float64, len(ids))
	type own struct {
		i          int
		logit, adj float64
	}
	var mine []own
	// The factors are read in the table, under one read lock for every
	// candidate (a copy each was a tenth of a recommendation's allocations).
	r.m.table.RLock()
	defer r.m.table.RUnlock()
	for i, id := range ids {
		ci := candidateInfo{ID: id, Item: items[id], Vec: r.m.tableVec(id)}
		x := r.m.rankFeatures(ctx, &ci)
		scores[i] = predict(r.w, &x)
		if _, _, ok := ctx.History(id); ok && len(r.hw) == len(x) && len(r.w) == len(x) {
			var lg, adj float64
			for j := range x {
				lg += r.w[j] * x[j]
				adj += r.hw[j] * x[j]
			}
			mine = append(mine, own{i, lg, adj})
		}
	}
	if len(mine) < 2 {
		return scores
	}
	// Summed in id order: the same mean whatever the order of ids.
	slices.SortFunc(mine, func(a, b own) int { return strings.Compare(ids[a.i], ids[b.i]) })
	var mean float64
	for _, o := range mine {
		mean += o.adj
	}
	mean /= float64(len(mine))
	for _, o := range mine {
		scores[o.i] = 1 / (1 + math.Exp(-max(-30, min(30, o.logit+o.adj-mean))))
	}
	return scores
}

// tableVec returns item id's factors in the table itself, or nil: valid
// while the caller holds m.table's lock, or inside Apply (Learn): the
// table changes only in Publish, expiry and Abort, which the store runs
// under the same apply lock.
func (m *Models) tableVec(id string) []float32 {
	i, ok := m.table.idx[id]
	if !ok {
		return nil
	}
	d := m.opts.Dim
	return m.table.vecs[int(i)*d : int(i+1)*d : int(i+1)*d]
}

// MFTop returns the k items best by the dot product of their factors
// with vec. From Options.MFIndexMin items on it scores the candidates of
// the MF index (mfindex.go), approximately, by their current factors;
// below, or before the first index is built, the whole catalogue. Only
// serving calls it: learning never depends on the index.
func (m *Models) MFTop(vec []float32, k int) []featurestore.Scored {
	d := m.opts.Dim
	if len(vec) != d || k <= 0 {
		return nil
	}
	m.table.RLock()
	defer m.table.RUnlock()
	top := featurestore.NewTopK(k)
	x := m.mf.index.Load()
	if x == nil || !m.mfIndexOn() || len(m.table.idx) < m.opts.MFIndexMin {
		m.offerRows(vec, 0, len(m.table.ids), top)
		return top.Best()
	}
	// The defaults are for k up to 64; more lists for more.
	probe := m.opts.MFIndexScan * ((k + 63) / 64)
	for _, l := range x.probe(vec, probe) {
		m.offerSeqs(vec, x.members[x.listStart[l.i]:x.listStart[l.i+1]], top)
	}
	m.offerSeqs(vec, x.holes, top)
	m.offerRows(vec, x.n, len(m.table.ids), top)
	return top.Best()
}

// MFTopExact is MFTop over the whole catalogue, without the index.
func (m *Models) MFTopExact(vec []float32, k int) []featurestore.Scored {
	d := m.opts.Dim
	if len(vec) != d || k <= 0 {
		return nil
	}
	m.table.RLock()
	defer m.table.RUnlock()
	top := featurestore.NewTopK(k)
	m.offerRows(vec, 0, len(m.table.ids), top)
	return top.Best()
}

// offerRows offers the items of the table's rows [lo, hi) to top, scored
// by the dot product with vec; m.table is read-locked.
func (m *Models) offerRows(vec []float32, lo, hi int, top *featurestore.TopK) {
	d := m.opts.Dim
	for i := lo; i < hi; i++ {
		if id := m.table.ids[i]; id != "" {
			top.Offer(featurestore.Scored{ItemID: id, Score: float64(dot(vec, m.table.vecs[i*d:(i+1)*d]))})
		}
	}
}

// offerSeqs is offerRows for the rows seqs. It reads a row's id only
// when its score could be kept: the rows are scattered over the table,
// and each read is a cache miss.
func (m *Models) offerSeqs(vec []float32, seqs []int32, top *featurestore.TopK) {
	d := m.opts.Dim
	floor, full := top.Floor()
	for _, s := range seqs {
		i := int(s)
		if i >= len(m.table.ids) {
			continue
		}
		score := float64(dot(vec, m.table.vecs[i*d:(i+1)*d]))
		if full && score < floor {
			continue
		}
		if id := m.table.ids[i]; id != "" {
			top.Offer(featurestore.Scored{ItemID: id, Score: score})
			floor, full = top.Floor()
		}
	}
}

// Neighbor is an item's neighbour with its similarity.
type Neighbor struct {
	ItemID string
	Score  float64
}

// Neighbors returns up to k neighbours of item in src by similarity as of
// src's read clock (at most Options.Neighbors).
func (m *Models) Neighbors(src featurestore.Reader, item string, k int) ([]Neighbor, error) {
	r, err := m.readNeighbors(src, item)
	if err != nil {
		return nil, err
	}
	k = min(k, m.opts.Neighbors)
	return m.rankNeighbors(r, src.Now(), k), nil
}

func (m *Models) rankNeighbors(r *neighborRecord, now int64, k int) []Neighbor {
	fwd := float64(now) / m.decayMS
	list := make([]featurestore.Scored, 0, len(r.List))
	for i := range r.List {
		list = append(list, featurestore.Scored{ItemID: r.List[i].ID, Score: r.sim(&r.List[i], fwd, m.opts.Shrinkage)})
	}
	featurestore.SortScored(list)
	if len(list) > k {
		list = list[:k]
	}
	out := make([]Neighbor, len(list))
	for i, c := range list {
		out[i] = Neighbor{ItemID: c.ItemID, Score: c.Score}
	}
	return out
}

// Info describes one model's state.
type Info struct {
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

// Info describes every model, as committed.
func (m *Models) Info() ([]Info, error) {
	var meta modelMeta
	meta.Ranker.init(numRankFeatures)
	// The value and its chunks of one version.
	v, err := m.st.Pin()
	if err != nil {
		return nil, err
	}
	err = readMeta(v.ReadKey, &meta, nil)
	v.Release()
	if err != nil {
		return nil, err
	}
	frozen := m.frozen.Load()
	nan := math.NaN()
	auc, ll := windowMetrics(meta.Ranker.Train, meta.Ranker.Labels)
	pauc, pll := windowMetrics(meta.Ranker.Pub, meta.Ranker.Labels)
	return []Info{
		{Name: "item2item", Version: meta.Learned, Examples: meta.Pairs, AUC: nan, LogLoss: nan, PublishedAUC: nan, PublishedLogLoss: nan, LastEventTS: meta.LastTS, Frozen: frozen},
		{Name: "user2user", Version: meta.Learned, Examples: meta.Learned, AUC: nan, LogLoss: nan, PublishedAUC: nan, PublishedLogLoss: nan, LastEventTS: meta.LastTS, Frozen: frozen},
		{Name: "mf", Version: meta.Learned, Examples: meta.Learned, AUC: nan, LogLoss: nan, PublishedAUC: nan, PublishedLogLoss: nan, LastEventTS: meta.LastTS, Frozen: frozen},
		{Name: "ranker", Version: meta.Ranker.Version, Examples: meta.Ranker.Examples, AUC: auc, LogLoss: ll, PublishedAUC: pauc, PublishedLogLoss: pll, LastEventTS: meta.Ranker.LastTS, Frozen: frozen},
	}, nil
}

// RankerWeights returns the ranker's feature names, its published weights
// and their version.
func (m *Models) RankerWeights() (names []string, weights []float64, version int64) {
	m.published.RLock()
	defer m.published.RUnlock()
	return RankFeatureNames(), slices.Clone(m.published.w), m.published.version
}

// RankerHistoryWeights returns the published history weights (added to
// the weights among the user's own items; see ScoreAll), by feature like
// RankerWeights, of the same version.
func (m *Models) RankerHistoryWeights() []float64 {
	m.published.RLock()
	defer m.published.RUnlock()
	return slices.Clone(m.published.hw)
}
