package models

import (
	"math"
	"slices"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/codec"
)

// The ranker's features, computed by one function (rankFeatures) for
// training, inside Apply, and for serving, so the two cannot drift.
var rankFeatureNames = [...]string{
	"bias",
	"item2item",         // log1p of the item's similarity to the user's history, recency-weighted
	"mf",                // dot product of the user's and item's factors
	"popularity",        // log1p of the item's decayed popularity
	"item_events",       // log1p of the item's lifetime events
	"item_conversion",   // (carts + favs + purchases + 1) / (views + 5)
	"category_affinity", // the user's share of decayed affinity in the item's category
	"recent_category",   // 1 if the item's category is the user's most recent one
	"seen",              // 1 if the item is in the user's history
	"seen_strength",     // strongest behavior with the item, weight / purchase weight
	"seen_recency",      // 2^(-hours since the user's last event with the item), 0 if unseen
	"seen_count",        // log1p of the user's events with the item
	"seen_position",     // 1 / (1 + the item's position in the user's history, newest first)
	"item_recency",      // 2^(-hours since the item's last event)
	"user_events",       // log1p of the user's lifetime events
}

const numRankFeatures = len(rankFeatureNames)

// RankFeatureNames lists the ranker's features in weight order.
func RankFeatureNames() []string { return rankFeatureNames[:] }

// rankerState is the FTRL-Proximal state, the published weights and the
// rolling progressive-validation window.
type rankerState struct {
	Z, N      []float64
	Published []float64
	Version   int64 // version of Published; 0 = all zeros, never trained
	Examples  int64 // examples learned
	LastTS    int64 // event time of the last example
	// Window holds the newest examples' predictions by the training
	// weights and by the published weights, and their labels, round-robin
	// at Pos.
	Train, Pub []float32
	Labels     []byte
	Pos        int
	// Published version's metrics on the window when it was published.
	PubAUC float64
	// HZ and HN are the FTRL state of the history weights: a correction
	// added to the weights among the user's own items only, learned from
	// pairwise contrasts of re-engagements (learnHistoryPairs), and
	// HPublished its served copy (published with Published).
	HZ, HN, HPublished []float64

	publishedDirty bool
}

func (r *rankerState) init(n int) {
	if len(r.Z) != n {
		r.Z, r.N, r.Published = make([]float64, n), make([]float64, n), make([]float64, n)
	}
	if len(r.HZ) != n {
		r.HZ, r.HN, r.HPublished = make([]float64, n), make([]float64, n), make([]float64, n)
	}
}

// encode encodes the state; with inline the window's entries too (the
// meta keeps them in chunks of their own: modelMeta.appendChunk).
func (r *rankerState) encode(e *codec.Encoder, inline bool) {
	e.Uvarint(uint64(len(r.Z)))
	for i := range r.Z {
		e.F64(r.Z[i])
		e.F64(r.N[i])
		e.F64(r.Published[i])
	}
	e.Varint(r.Version)
	e.Varint(r.Examples)
	e.Varint(r.LastTS)
	e.F64(r.PubAUC)
	e.Uvarint(uint64(len(r.Labels)))
	if inline {
		e.B = r.appendWindow(e.B, 0, len(r.Labels))
	}
	e.Uvarint(uint64(r.Pos))
	// The history weights (since metaVersion 2).
	e.Uvarint(uint64(len(r.HZ)))
	for i := range r.HZ {
		e.F64(r.HZ[i])
		e.F64(r.HN[i])
		e.F64(r.HPublished[i])
	}
}

// decode reads the state; withHistory says whether the encoding has the
// history weights (without them they are zero), inline whether it has the
// window's entries (without them they are zero until the meta's chunks
// are read).
func (r *rankerState) decode(d *codec.Decoder, withHistory, inline bool) {
	n := d.Uvarint()
	if n > 1024 {
		d.Fail()
		return
	}
	r.Z, r.N, r.Published = make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range n {
		r.Z[i], r.N[i], r.Published[i] = d.F64(), d.F64(), d.F64()
	}
	r.Version, r.Examples, r.LastTS = d.Varint(), d.Varint(), d.Varint()
	r.PubAUC = d.F64()
	w := d.Uvarint()
	if w > 1<<22 || (inline && uint64(len(d.B)) < 9*w) {
		d.Fail()
		return
	}
	r.Train, r.Pub, r.Labels = make([]float32, w), make([]float32, w), make([]byte, w)
	if inline {
		r.decodeWindow(d, 0, int(w))
	}
	pos := d.Uvarint()
	if len(r.Z) != numRankFeatures && n != 0 {
		d.Fail()
	}
	if pos > w {
		d.Fail()
	}
	r.Pos = int(pos)
	r.HZ, r.HN, r.HPublished = make([]float64, n), make([]float64, n), make([]float64, n)
	if !withHistory {
		return
	}
	if hn := d.Uvarint(); hn != n {
		d.Fail()
		return
	}
	for i := range n {
		r.HZ[i], r.HN[i], r.HPublished[i] = d.F64(), d.F64(), d.F64()
	}
}

// appendWindow encodes entries [lo, hi) of the rolling window, 9 bytes
// each: the training and published predictions and the label.
func (r *rankerState) appendWindow(b []byte, lo, hi int) []byte {
	for i := lo; i < hi; i++ {
		b = appendF32(b, r.Train[i])
		b = appendF32(b, r.Pub[i])
		b = append(b, r.Labels[i])
	}
	return b
}

// decodeWindow decodes entries [lo, hi) of the rolling window (see
// appendWindow); d fails if it holds fewer.
func (r *rankerState) decodeWindow(d *codec.Decoder, lo, hi int) {
	if len(d.B) < 9*(hi-lo) {
		d.Fail()
		return
	}
	for i := lo; i < hi; i++ {
		r.Train[i] = math.Float32frombits(le32(d.B))
		r.Pub[i] = math.Float32frombits(le32(d.B[4:]))
		r.Labels[i] = d.B[8]
		d.B = d.B[9:]
	}
}

func appendF32(b []byte, f float32) []byte {
	u := math.Float32bits(f)
	return append(b, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// weights returns the FTRL-Proximal weights from z and n.
func (r *rankerState) weights(o *Options) []float64 { return ftrlWeights(r.Z, r.N, o) }

// historyWeights returns the history weights from their z and n.
func (r *rankerState) historyWeights(o *Options) []float64 { return ftrlWeights(r.HZ, r.HN, o) }

func ftrlWeights(zs, ns []float64, o *Options) []float64 {
	w := make([]float64, len(zs))
	for i := range w {
		w[i] = ftrlWeight(zs[i], ns[i], o)
	}
	return w
}

// ftrlStep takes one FTRL-Proximal step on (z, n) with the gradient g·x
// of the loss, w being the weights before the step.
func ftrlStep(z, n, w []float64, x *[numRankFeatures]float64, g float64, o *Options) {
	for i, xi := range x {
		if xi == 0 {
			continue
		}
		gi := g * xi
		sigma := (math.Sqrt(n[i]+gi*gi) - math.Sqrt(n[i])) / o.RankerAlpha
		z[i] += gi - sigma*w[i]
		n[i] += gi * gi
	}
}

// ftrlWeight is one FTRL-Proximal weight from its z and n.
func ftrlWeight(z, n float64, o *Options) float64 {
	if math.Abs(z) <= o.RankerL1 {
		return 0
	}
	sign := 1.0
	if z < 0 {
		sign = -1
	}
	return -(z - sign*o.RankerL1) / ((o.RankerBeta+math.Sqrt(n))/o.RankerAlpha + o.RankerL2)
}

func predict(w []float64, x *[numRankFeatures]float64) float64 {
	var dot float64
	for i := range w {
		dot += w[i] * x[i]
	}
	dot = max(-30, min(30, dot))
	return 1 / (1 + math.Exp(-dot))
}

// Context is what ranking needs of one user at one time (Models.Context).
type Context struct {
	now      int64
	user     *featurestore.UserRecord
	model    *User
	affTotal float64 // sum of 2^(affinity - ref) over the user's categories
	affRef   float64
	seen     map[string]Interaction
	seenPos  map[string]int
	// hist are the neighbour records of the newest history items and
	// histW their recency and behavior weights.
	hist  []*neighborRecord
	histW []float64
	// whist replaces hist when the writer trains: its own records.
	whist []*pairRecord
	fwd   float64
	// sims sums, per candidate item (the neighbours of the history, in
	// the order first met), the recency- and behavior-weighted similarity
	// to the user's history items, and remembers the history item that
	// contributed most (for reasons); simAt indexes it by item. Built only
	// for serving (nil: i2iScore looks candidates up one by one). One map
	// of positions, sized for every neighbour at once, instead of maps of
	// scores and reasons grown entry by entry: their growth was an eighth
	// of a recommendation's CPU.
	sims  []simEntry
	simAt map[string]int32
}

// simEntry is one item-to-item candidate of a Context.
type simEntry struct {
	id          string
	score, best float64 // the summed similarity; the largest contribution
	from        int32   // the history position of that contribution
}

// candidateInfo is what ranking needs of one candidate item.
type candidateInfo struct {
	ID   string
	Item *featurestore.ItemRecord
	Vec  []float32
}

// HistoryForScoring is how many of the newest history items item-to-item
// scores (and user-to-user similarity) are computed from.
const HistoryForScoring = 20

// Context returns the ranking context of user model u with feature record
// rec at time now, from the state src (pin a Version so that the records
// of a request are of one version). With neighbours it reads the
// neighbour lists of the newest history items, for ranking and the
// item-to-item candidates (Similar, Because); without, it holds the
// history alone (History), which is all the filters need.
func (m *Models) Context(src featurestore.Reader, u *User, rec *featurestore.UserRecord, now int64, neighbours bool) (*Context, error) {
	if !neighbours {
		return &Context{now: now, user: rec, model: u}, nil
	}
	return m.rankContextAt(src, nil, u, rec, now, true)
}

// Now is the context's time.
func (ctx *Context) Now() int64 { return ctx.now }

// TopSimilar returns the k items most similar to the user's history (by
// the recency- and behavior-weighted similarity; a context with
// neighbours only), best first, those with a positive score alone.
func (ctx *Context) TopSimilar(k int) []featurestore.Scored {
	if k <= 0 {
		return nil
	}
	t := featurestore.NewTopK(k)
	for _, e := range ctx.sims {
		if e.score > 0 {
			t.Offer(featurestore.Scored{ItemID: e.id, Score: e.score})
		}
	}
	return t.Best()
}

// Because returns the history item that contributed most to item id's
// similarity (a context with neighbours only).
func (ctx *Context) Because(id string) (Interaction, bool) {
	i, ok := ctx.simAt[id]
	if !ok || ctx.sims[i].best <= 0 {
		return Interaction{}, false
	}
	return ctx.model.History[ctx.sims[i].from], true
}

// rankContextAt builds the ranking context of user from their records,
// reading the neighbour lists of the history items through b (nil reads
// them in src). With all, it also gathers every neighbour of the
// history as an item-to-item candidate.
func (m *Models) rankContextAt(src featurestore.Reader, b *batch, um *User, urec *featurestore.UserRecord, now int64, all bool) (*Context, error) {
	ctx := &Context{now: now, user: urec, model: um, fwd: float64(now) / m.decayMS}
	if all {
		// Serving scores hundreds of candidates: index the history.
		ctx.seen = make(map[string]Interaction, len(um.History))
		ctx.seenPos = make(map[string]int, len(um.History))
		for i, h := range um.History {
			ctx.seen[h.Item] = h
			ctx.seenPos[h.Item] = i
		}
	}
	if urec != nil && len(urec.Affinities) > 0 {
		ctx.affRef = math.Inf(-1)
		for _, a := range urec.Affinities {
			ctx.affRef = max(ctx.affRef, a.Score)
		}
		for _, a := range urec.Affinities {
			ctx.affTotal += math.Exp2(a.Score - ctx.affRef)
		}
	}
	for i, h := range um.History {
		if i == HistoryForScoring {
			break
		}
		if b != nil {
			r, err := b.neighborRecord(h.Item)
			if err != nil {
				return nil, err
			}
			ctx.whist = append(ctx.whist, r)
		} else {
			r, err := m.readNeighbors(src, h.Item)
			if err != nil {
				return nil, err
			}
			ctx.hist = append(ctx.hist, r)
		}
		ctx.histW = append(ctx.histW, m.weights[h.Behavior]/m.weights[featurestore.BehaviorPurchase]*math.Exp2(-math.Max(0, float64(now-h.TS))/m.pairMS))
	}
	if all {
		n := 0
		for _, r := range ctx.hist {
			n += len(r.List)
		}
		ctx.simAt = make(map[string]int32, n)
		ctx.sims = make([]simEntry, 0, n)
		for i, r := range ctx.hist {
			sims := r.simsAt(ctx.fwd, m.opts.Shrinkage)
			for j := range r.List {
				nb := &r.List[j]
				c := sims[j] * ctx.histW[i]
				k, ok := ctx.simAt[nb.ID]
				if !ok {
					k = int32(len(ctx.sims))
					ctx.simAt[nb.ID] = k
					ctx.sims = append(ctx.sims, simEntry{id: nb.ID})
				}
				e := &ctx.sims[k]
				e.score += c
				if c > e.best {
					e.best, e.from = c, int32(i)
				}
			}
		}
	}
	return ctx, nil
}

// History returns id's entry in the user's history and its position.
func (ctx *Context) History(id string) (Interaction, int, bool) {
	if ctx.seen != nil {
		h, ok := ctx.seen[id]
		return h, ctx.seenPos[id], ok
	}
	for i, h := range ctx.model.History {
		if h.Item == id {
			return h, i, true
		}
	}
	return Interaction{}, 0, false
}

// i2iScore is item id's similarity to the user's history.
func (m *Models) i2iScore(ctx *Context, id string) float64 {
	if ctx.simAt != nil {
		if k, ok := ctx.simAt[id]; ok {
			return ctx.sims[k].score
		}
		return 0
	}
	var sum float64
	if ctx.whist != nil {
		h, ok := m.handle(id)
		if !ok {
			return 0 // in no neighbour record the writer holds
		}
		for i, r := range ctx.whist {
			if j := r.find(h); j >= 0 {
				sum += r.sim(j, ctx.fwd, m.opts.Shrinkage) * ctx.histW[i]
			}
		}
		return sum
	}
	for i, r := range ctx.hist {
		if j := r.find(id); j >= 0 {
			sum += r.sim(&r.List[j], ctx.fwd, m.opts.Shrinkage) * ctx.histW[i]
		}
	}
	return sum
}

// rankFeatures computes the ranker's features of candidate c for ctx.
func (m *Models) rankFeatures(ctx *Context, c *candidateInfo) [numRankFeatures]float64 {
	var x [numRankFeatures]float64
	x[0] = 1
	x[1] = math.Log1p(100 * m.i2iScore(ctx, c.ID))
	if len(ctx.model.Vec) == len(c.Vec) {
		var dot float32
		for i := range c.Vec {
			dot += ctx.model.Vec[i] * c.Vec[i]
		}
		x[2] = max(-5, min(5, float64(dot)))
	}
	if it := c.Item; it != nil && !math.IsInf(it.Pop, -1) {
		x[3] = math.Log1p(m.st.PopularityAt(it.Pop, ctx.now))
		var views, other int64
		for b, n := range it.Count {
			if featurestore.Behavior(b) == featurestore.BehaviorView {
				views += n
			} else {
				other += n
			}
		}
		x[4] = math.Log1p(float64(views + other))
		x[5] = float64(other+1) / float64(views+5)
		if ctx.user != nil && it.CategoryID != "" {
			for _, a := range ctx.user.Affinities {
				if a.ID == it.CategoryID && ctx.affTotal > 0 {
					x[6] = math.Exp2(a.Score-ctx.affRef) / ctx.affTotal
				}
			}
			if len(ctx.user.RecentCategories) > 0 && ctx.user.RecentCategories[0].ID == it.CategoryID {
				x[7] = 1
			}
		}
	}
	if h, pos, ok := ctx.History(c.ID); ok {
		x[8] = 1
		x[9] = m.weights[h.Behavior] / m.weights[featurestore.BehaviorPurchase]
		x[10] = math.Exp2(-math.Max(0, float64(ctx.now-h.TS)) / 3.6e6)
		x[11] = math.Log1p(float64(h.Count))
		x[12] = 1 / float64(1+pos)
	}
	if it := c.Item; it != nil && it.LastTSAny > 0 {
		x[13] = math.Exp2(-math.Max(0, float64(ctx.now-it.LastTSAny)) / 3.6e6)
	}
	x[14] = math.Log1p(float64(ctx.model.Events))
	return x
}

// learnRanker scores one example with the training and published weights
// (progressive validation), records both in the rolling window, and then
// takes one FTRL-Proximal step on it.
func (b *batch) learnRanker(ctx *Context, c *candidateInfo, label float64) error {
	o := &b.m.opts
	r := &b.meta.Ranker
	r.init(numRankFeatures)
	x := b.m.rankFeatures(ctx, c)
	w := r.weights(o)
	p := predict(w, &x)
	pPub := predict(r.Published, &x)
	if len(r.Labels) < o.RankerWindow {
		r.Train = append(r.Train, float32(p))
		r.Pub = append(r.Pub, float32(pPub))
		r.Labels = append(r.Labels, byte(label))
		b.m.dirty.mark(true, len(r.Labels)-1)
	} else {
		if r.Pos >= len(r.Labels) {
			r.Pos = 0
		}
		r.Train[r.Pos], r.Pub[r.Pos], r.Labels[r.Pos] = float32(p), float32(pPub), byte(label)
		b.m.dirty.mark(true, r.Pos)
	}
	r.Pos = (r.Pos + 1) % o.RankerWindow
	ftrlStep(r.Z, r.N, w, &x, p-label, o)
	r.Examples++
	r.LastTS = max(r.LastTS, ctx.now)
	if r.Examples%int64(o.PublishEvery) == 0 {
		trainAUC, _ := windowMetrics(r.Train, r.Labels)
		pubAUC, _ := windowMetrics(r.Pub, r.Labels)
		if r.Version == 0 || trainAUC >= pubAUC-o.PublishMargin {
			r.Published = r.weights(o) // including this example's step
			r.HPublished = r.historyWeights(o)
			r.Version++
			r.PubAUC = trainAUC
			r.publishedDirty = true
		}
	}
	return nil
}

// windowMetrics returns the AUC and mean log loss of predictions p for
// labels; AUC is NaN when the window lacks either class.
func windowMetrics(p []float32, labels []byte) (auc, logLoss float64) {
	n := len(labels)
	if n == 0 {
		return math.NaN(), math.NaN()
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		switch {
		case p[a] < p[b]:
			return -1
		case p[a] > p[b]:
			return 1
		}
		return 0
	})
	// Rank-sum (Mann-Whitney) with average ranks for ties.
	var pos, rankSum float64
	for i := 0; i < n; {
		j := i
		for j < n && p[idx[j]] == p[idx[i]] {
			j++
		}
		avg := float64(i+j+1) / 2
		for k := i; k < j; k++ {
			if labels[idx[k]] == 1 {
				pos++
				rankSum += avg
			}
		}
		i = j
	}
	neg := float64(n) - pos
	auc = math.NaN()
	if pos > 0 && neg > 0 {
		auc = (rankSum - pos*(pos+1)/2) / (pos * neg)
	}
	for i := range labels {
		q := max(1e-7, min(1-1e-7, float64(p[i])))
		if labels[i] == 1 {
			logLoss -= math.Log(q)
		} else {
			logLoss -= math.Log(1 - q)
		}
	}
	return auc, logLoss / float64(n)
}

// learnHistoryPairs takes pairwise logistic steps on the features of the
// event's item (pos) minus those of other items of the user's history
// that were not bought, drawn with a generator seeded by the event id:
// pointwise examples against uniform negatives cannot order the user's
// own items (history features are zero on almost every negative), and
// re-engagement lists are exactly that order. Nothing is recorded in the
// validation window.
func (b *batch) learnHistoryPairs(ctx *Context, ev *featurestore.Event, pos *candidateInfo) error {
	um := ctx.model
	if _, _, ok := ctx.History(ev.ItemID); !ok {
		return nil
	}
	o := &b.m.opts
	pool := make([]int, 0, len(um.History))
	for i, h := range um.History {
		if h.Item != ev.ItemID && h.Behavior != featurestore.BehaviorPurchase {
			pool = append(pool, i)
		}
	}
	if len(pool) == 0 {
		return nil
	}
	r := &b.meta.Ranker
	r.init(numRankFeatures)
	xp := b.m.rankFeatures(ctx, pos)
	w := r.weights(o)
	v := r.historyWeights(o)
	h := splitmix(fnv64(ev.ID) ^ 0x70616972)
	for n := 0; n < o.RankerPairs && len(pool) > 0; n++ {
		h = splitmix(h)
		j := int(h % uint64(len(pool)))
		id := um.History[pool[j]].Item
		pool = slices.Delete(pool, j, j+1)
		rec, err := b.recs.Item(id)
		if err != nil {
			return err
		}
		vec := b.m.tableVec(id) // the writer: see tableVec
		if hm, ok := b.items[id]; ok {
			vec = hm.Vec
		}
		xn := b.m.rankFeatures(ctx, &candidateInfo{ID: id, Item: rec, Vec: vec})
		var x [numRankFeatures]float64
		for i := range x {
			x[i] = xp[i] - xn[i]
		}
		var dot float64
		for i := range w {
			dot += (w[i] + v[i]) * x[i]
		}
		p := 1 / (1 + math.Exp(-max(-30, min(30, dot))))
		ftrlStep(r.HZ, r.HN, v, &x, p-1, o)
		for i, xi := range x {
			if xi != 0 {
				v[i] = ftrlWeight(r.HZ[i], r.HN[i], o)
			}
		}
	}
	return nil
}
