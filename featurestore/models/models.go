package models

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/readcache"
	"github.com/streamrec/recsys/featurestore/internal/sizedlru"
)

// Models is the state of the incremental models of one store. It is the
// store's featurestore.Learner (Open hands it in through Options.Learner),
// and its read methods serve recommendations and the model tables. Apply
// owns the caches and meta; the factor table and the published ranker are
// read under their locks.
type Models struct {
	opts    Options
	decayMS float64 // DecayHalfLife in ms
	pairMS  float64 // PairHalfLife in ms

	// st is the store the models were loaded from (Load), and its
	// behavior weights.
	st        *featurestore.Store
	weights   [numBehaviors]float64
	logWeight [numBehaviors]float64

	frozen atomic.Bool

	// reads caches committed neighbour records for readers (a context
	// reads the records of 20 history items, each folded from its merge
	// operands otherwise); Commit, Abort and expiry invalidate it.
	reads *readcache.Cache[*neighborRecord]
	// userReads and itemReads cache committed user and item models for
	// readers (a recommendation reads eleven user models and twenty item
	// models); Commit, Abort and expiry invalidate them like reads.
	userReads *readcache.Cache[*User]
	itemReads *readcache.Cache[*Item]
	// expiredUsers are the users ExpireUser dropped (see expired).
	expiredUsers []string
	// expired are the items ExpireItem dropped, invalidated in reads once
	// the expiry batch has committed (ExpireCommitted).
	expired []string

	users     *sizedlru.Cache[string, *User]
	items     *sizedlru.Cache[string, *Item]
	neighbors *sizedlru.Cache[string, *pairRecord]
	meta      *modelMeta
	dirty     metaDirty // the chunks of meta changed since it was written
	// handles and names intern the item ids of the writer's neighbour
	// records (pairs.go); Apply alone uses them.
	handles map[string]int32
	names   []string

	// table holds every item's MF factors by Seq, for scoring the whole
	// catalogue and drawing uniform negatives without a Pebble read.
	table struct {
		sync.RWMutex
		idx  map[string]int32
		ids  []string  // by Seq; "" for a Seq not (yet) committed
		vecs []float32 // Dim per item
	}
	// mf is the approximate index of MF candidates over the table
	// (mfindex.go): serving data only, built in the background.
	mf mfState
	// published is the ranker's served weights (a copy of meta's).
	published struct {
		sync.RWMutex
		w       []float64
		hw      []float64 // the history weights (rankerState.HPublished)
		version int64
	}
}

// New returns the models with the hyperparameters o (zero fields take
// their defaults), ready to be handed to featurestore.Open as
// Options.Learner. They serve one store.
func New(o Options) (*Models, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	m := &Models{opts: o, decayMS: float64(o.DecayHalfLife.Milliseconds()), pairMS: float64(o.PairHalfLife.Milliseconds())}
	cb := o.CacheBytes
	m.users = sizedlru.New[string](o.CacheEntries, cb*15/100, (*User).memSize)
	m.items = sizedlru.New[string](o.CacheEntries, cb*10/100, (*Item).memSize)
	// Neighbour records are the largest: up to 1.5 × Neighbors pairs of
	// about 21 bytes each in the writer's form (pairs.go).
	m.neighbors = sizedlru.New[string](o.CacheEntries, cb*35/100, (*pairRecord).memSize)
	m.handles = make(map[string]int32)
	m.table.idx = make(map[string]int32)
	m.reads = readcache.NewSized[*neighborRecord](o.CacheEntries, cb*25/100, (*neighborRecord).memSize)
	m.userReads = readcache.NewSized[*User](min(o.CacheEntries, readModelEntries), cb*8/100, (*User).memSize)
	m.itemReads = readcache.NewSized[*Item](min(o.CacheEntries, readModelEntries), cb*7/100, (*Item).memSize)
	return m, nil
}

// Merge implements featurestore.Learner: neighbour records are written as
// merge deltas (pairs.go).
func (m *Models) Merge(key, value []byte) (pebble.ValueMerger, error) {
	if len(key) > 1 && key[0] == 'n' && key[1] == '/' {
		nm := &neighborMerger{}
		return nm, nm.MergeNewer(value)
	}
	return nil, nil
}

// Load implements featurestore.Learner: it reads the model metadata and
// the factor table of s.
func (m *Models) Load(s *featurestore.Store) error {
	if m.st != nil && m.st != s {
		return errors.New("models: already serving another store")
	}
	m.st = s
	m.weights = s.Definitions().BehaviorWeights
	for b, w := range m.weights {
		m.logWeight[b] = math.Log2(w)
	}
	return m.load()
}

func (m *Models) load() error {
	m.meta = &modelMeta{Ring: make([]string, 0, negRingSize), DecayMS: m.opts.DecayHalfLife.Milliseconds()}
	m.meta.Ranker.init(numRankFeatures)
	m.dirty = metaDirty{}
	if err := readMeta(m.st.ReadKey, m.meta, &m.dirty); err != nil {
		return err
	}
	if want := m.opts.DecayHalfLife.Milliseconds(); m.meta.DecayMS != want {
		if err := m.rescaleNeighbors(m.meta.DecayMS, want); err != nil {
			return err
		}
	}
	m.setPublished(&m.meta.Ranker)
	var im Item
	return m.st.ScanPrefix(prefixItemModel, func(id string, v []byte) error {
		if err := im.decode(v); err != nil {
			return fmt.Errorf("item model %q: %w", id, err)
		}
		m.setVec(id, im.Seq, im.Vec)
		return nil
	})
}

// readMeta reads the meta through read (of one state version) into meta:
// its value and, for version 3, its chunks. An older value holds them
// itself; then every chunk is marked in dirty (if not nil), to be written
// with the next value.
func readMeta(read func(key []byte) ([]byte, bool, error), meta *modelMeta, dirty *metaDirty) error {
	v, ok, err := read([]byte(keyModels))
	if err != nil || !ok {
		return err
	}
	inline, err := meta.decodeValue(v)
	if err != nil {
		return fmt.Errorf("%s: %w", keyModels, err)
	}
	if inline {
		if dirty != nil {
			dirty.all = true
		}
		return nil
	}
	return meta.loadChunks(read)
}

// maxRescaleBytes bounds the neighbour records rescaleNeighbors converts
// in its one batch.
const maxRescaleBytes = 1 << 30

// rescaleNeighbors re-expresses the neighbour records, whose log values
// were learned with decay half-life oldMS, in newMS (models.decay-half-life
// changed, or a data dir from before the meta recorded it; the default
// was 7 days then). Every such value (a record's mass, its pairs'
// co-occurrence and partner mass) is log2 Σ w·2^(t/d) over the evidence,
// so its weight as of the newest event learned, T, is 2^(v − T/d): adding
// T/newMS − T/oldMS keeps that weight, and the evidence decays at the new
// rate from T on. Read with the new reference unconverted, the values
// would be off by 2^(T·(1/oldMS − 1/newMS)), thousands of binary orders
// of magnitude: infinite masses and NaN similarities. The records and the
// meta are written in one batch (Store.Migrate), so a crash leaves either
// all of them converted or none.
func (m *Models) rescaleNeighbors(oldMS, newMS int64) error {
	T := float64(m.meta.LastTS)
	shift := T/float64(newMS) - T/float64(oldMS)
	m.meta.DecayMS = newMS
	return m.st.Migrate(func(b *pebble.Batch) error {
		var r neighborRecord
		var buf []byte
		err := m.st.ScanPrefix(prefixNeighbors, func(id string, v []byte) error {
			if err := r.decode(v); err != nil {
				return fmt.Errorf("neighbour record %q: %w", id, err)
			}
			r.LogMass += shift
			for i := range r.List {
				r.List[i].LogC += shift
				r.List[i].LogMass += shift
			}
			buf = r.appendTo(buf[:0])
			if b.Len()+len(buf) > maxRescaleBytes {
				return fmt.Errorf("models.decay-half-life: the neighbour records were learned with %s and are more than %d MiB to convert at once: start with --models.decay-half-life %s",
					time.Duration(oldMS)*time.Millisecond, maxRescaleBytes>>20, time.Duration(oldMS)*time.Millisecond)
			}
			return b.Set(neighborKey(id), buf, nil)
		})
		if err != nil {
			return err
		}
		return m.dirty.write(m.meta, func(k, v []byte) error { return b.Set(k, v, nil) })
	})
}

func (m *Models) setPublished(r *rankerState) {
	m.published.Lock()
	m.published.w = slices.Clone(r.Published)
	m.published.hw = slices.Clone(r.HPublished)
	m.published.version = r.Version
	m.published.Unlock()
}

// setVec stores v as row seq (item id) of the factor table.
func (m *Models) setVec(id string, seq int64, v []float32) {
	m.table.Lock()
	defer m.table.Unlock()
	m.setVecLocked(id, seq, v)
}

// setVecLocked is setVec with m.table locked.
func (m *Models) setVecLocked(id string, seq int64, v []float32) {
	d := m.opts.Dim
	if len(v) != d {
		return
	}
	if n := int(seq) + 1; n > len(m.table.ids) {
		m.table.ids = append(m.table.ids, make([]string, n-len(m.table.ids))...)
		m.table.vecs = append(m.table.vecs, make([]float32, n*d-len(m.table.vecs))...)
	}
	m.table.idx[id] = int32(seq)
	m.table.ids[seq] = id
	copy(m.table.vecs[int(seq)*d:], v)
}

// batch holds the model records one Apply changes, decoded, until they
// are written at its end. It is the models' featurestore.LearnBatch.
type batch struct {
	m         *Models
	recs      *featurestore.BatchRecords
	users     map[string]*User
	items     map[string]*Item
	neighbors map[string]*pairRecord
	meta      *modelMeta
	newSeq    map[int64]string // items created by the batch, by Seq
	// tableItems and vecUpdates are what Publish saw of the factor table
	// (its items, and the indexed rows the batch moved), for Commit.
	tableItems, vecUpdates int
	// pub is what Publish changes, listed by prepare before the commit.
	pub struct {
		users, items, neighbors []string
		models                  []*Item // of items, by position
		ready                   bool
		// The new values of the changed records that readers have cached
		// (copies: the writer goes on changing its own), which replace
		// the cached ones at the publication instead of being dropped.
		freshUsers     map[string]*User
		freshItems     map[string]*Item
		freshNeighbors map[string]*neighborRecord
	}
}

// Begin implements featurestore.Learner.
func (m *Models) Begin(recs *featurestore.BatchRecords) featurestore.LearnBatch {
	return &batch{
		m: m, recs: recs,
		users: make(map[string]*User), items: make(map[string]*Item),
		neighbors: make(map[string]*pairRecord), meta: m.meta, newSeq: make(map[int64]string),
	}
}

// itemBySeq returns the item created seq-th, or "".
func (b *batch) itemBySeq(seq int64) string {
	if id, ok := b.newSeq[seq]; ok {
		return id
	}
	m := b.m
	m.table.RLock()
	defer m.table.RUnlock()
	if seq < int64(len(m.table.ids)) {
		return m.table.ids[seq]
	}
	return ""
}

func (b *batch) userModel(id string) (*User, error) {
	if u, ok := b.users[id]; ok {
		return u, nil
	}
	u, ok := b.m.users.Get(id)
	if !ok && b.recs.NewUser(id) {
		// No feature record before the batch, so no model records either
		// (they are created and expired together): nothing to read.
		u = new(User)
	} else if !ok {
		var err error
		if u, _, err = b.m.readUser(b.m.st, id); err != nil {
			return nil, err
		}
	}
	b.users[id] = u
	return u, nil
}

// itemModel returns item id's model as of the batch, creating it (with
// the next creation sequence number) when the item has none.
func (b *batch) itemModel(id string) (*Item, error) {
	return b.loadItemModel(id, true)
}

// existingItemModel is itemModel for an item that must already have a
// model: nil when it has none (it expired), without creating one.
func (b *batch) existingItemModel(id string) (*Item, error) {
	return b.loadItemModel(id, false)
}

func (b *batch) loadItemModel(id string, create bool) (*Item, error) {
	if it, ok := b.items[id]; ok {
		return it, nil
	}
	it, ok := b.m.items.Get(id)
	if !ok {
		var found bool
		var err error
		if b.recs.NewItem(id) {
			it = new(Item)
		} else if it, found, err = b.m.readItem(b.m.st, id); err != nil {
			return nil, err
		}
		if !found {
			if !create {
				return nil, nil
			}
			it.Seq = b.meta.Items
			b.meta.Items++
			b.newSeq[it.Seq] = id
		}
	}
	b.items[id] = it
	return it, nil
}

// neighborRecord returns item id's neighbour record as of the batch, in
// the writer's form.
func (b *batch) neighborRecord(id string) (*pairRecord, error) {
	if r, ok := b.neighbors[id]; ok {
		return r, nil
	}
	r, ok := b.m.neighbors.Get(id)
	if !ok && b.recs.NewItem(id) {
		r = &pairRecord{LogMass: math.Inf(-1)}
	} else if !ok {
		nr, err := b.m.readNeighbors(b.m.st, id)
		if err != nil {
			return nil, err
		}
		r = b.m.pairsFrom(nr)
		// Read back from Pebble, it was folded from its base and every
		// delta since: written whole if the batch changes it, so that the
		// next read folds only the deltas written after this batch. (With
		// deltas alone, the records of a catalogue larger than the cache
		// were folded from ever longer chains, and applying a batch slowed
		// down without end.)
		r.full = true
	}
	b.neighbors[id] = r
	return r, nil
}

// Learn learns from ev, given the user's and item's feature records as
// they were before ev. It runs inside Apply, event by event, so the result
// does not depend on how events are split into batches.
func (b *batch) Learn(ev *featurestore.Event, urec *featurestore.UserRecord, irec *featurestore.ItemRecord) error {
	m := b.m
	o := &m.opts
	um, err := b.userModel(ev.UserID)
	if err != nil {
		return err
	}
	if m.frozen.Load() {
		// Frozen models: the history (a feature of the user) still moves.
		pushHistory(um, ev, o.HistoryCap)
		return nil
	}
	im, err := b.itemModel(ev.ItemID)
	if err != nil {
		return err
	}
	// New entities (and factors of another dimension, after a change of
	// models.dim) start from their deterministic initial factors.
	if len(um.Vec) != o.Dim {
		um.Vec = initVec("u/"+ev.UserID, o.Dim)
	}
	if len(im.Vec) != o.Dim {
		im.Vec = initVec("i/"+ev.ItemID, o.Dim)
	}
	negs := m.drawNegatives(b.meta, ev)
	negModels := make([]*Item, 0, len(negs))
	for _, id := range negs {
		// A ring item may have expired since: it is not a negative then
		// (and must not get a model again).
		nm, err := b.existingItemModel(id)
		if err != nil {
			return err
		}
		if nm == nil {
			continue
		}
		if len(nm.Vec) != o.Dim {
			nm.Vec = initVec("i/"+id, o.Dim)
		}
		negModels = append(negModels, nm)
	}
	// 1. The ranker, on its sample of events: score every example before
	// learning from it.
	if ev.Behavior != featurestore.BehaviorView || rankerSampled(ev.ID, o.RankerSample) {
		ctx, err := m.rankContextAt(nil, b, um, urec, ev.TS, false)
		if err != nil {
			return err
		}
		pos := candidateInfo{ID: ev.ItemID, Item: irec, Vec: im.Vec}
		if err := b.learnRanker(ctx, &pos, 1); err != nil {
			return err
		}
		// Uniform negatives from the whole catalogue, so that the ranker
		// learns what popularity is worth (negatives drawn by popularity
		// teach it that popular items are negatives).
		for _, id := range b.uniformNegatives(ev, negs) {
			rec, err := b.recs.Item(id)
			if err != nil {
				return err
			}
			// Read the factors without marking the item's record dirty: the
			// ranker does not change it.
			vec := m.tableVec(id) // the writer: see tableVec
			if hm, ok := b.items[id]; ok {
				vec = hm.Vec
			}
			neg := candidateInfo{ID: id, Item: rec, Vec: vec}
			if err := b.learnRanker(ctx, &neg, 0); err != nil {
				return err
			}
		}
		// A re-engagement (a cart, fav or purchase of an item the user
		// touched before) also teaches the ranker which of the user's own
		// items comes back: pairwise steps against other history items.
		if ev.Behavior != featurestore.BehaviorView && o.RankerPairs > 0 {
			if err := b.learnHistoryPairs(ctx, ev, &pos); err != nil {
				return err
			}
		}
	}

	// 2. Matrix factorization: a logistic SGD step on the positive and
	// on each negative.
	w := float32(m.weights[ev.Behavior] / m.weights[featurestore.BehaviorView])
	sgdStep(um.Vec, im.Vec, 1, w, float32(o.LearningRate), float32(o.Reg))
	for _, nm := range negModels {
		sgdStep(um.Vec, nm.Vec, 0, 1, float32(o.LearningRate), float32(o.Reg))
	}

	// 3. Item-item co-occurrence with the newest history items.
	if err := b.pairWithHistory(ev, um); err != nil {
		return err
	}

	// 4. Histories, recent users and the negative ring.
	pushHistory(um, ev, o.HistoryCap)
	um.Events++
	im.Users = featurestore.PushRecent(im.Users, ev.UserID, ev.TS, o.RecentUsers)
	ring := b.meta
	if len(ring.Ring) < negRingSize {
		ring.Ring = append(ring.Ring, ev.ItemID)
	} else {
		ring.Ring[ring.RingPos] = ev.ItemID
	}
	m.dirty.mark(false, ring.RingPos) // the ring fills up to RingPos first
	ring.RingPos = (ring.RingPos + 1) % negRingSize
	ring.Learned++
	ring.LastTS = max(ring.LastTS, ev.TS)
	return nil
}

// drawNegatives picks up to Negatives items from the ring, other than the
// event's item, with a generator seeded by the event id.
func (m *Models) drawNegatives(meta *modelMeta, ev *featurestore.Event) []string {
	n := m.opts.Negatives
	if len(meta.Ring) == 0 {
		return nil
	}
	out := make([]string, 0, n)
	h := fnv64(ev.ID)
	for tries := 0; len(out) < n && tries < 4*n; tries++ {
		h = splitmix(h)
		id := meta.Ring[h%uint64(len(meta.Ring))]
		if id != ev.ItemID && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// uniformNegatives draws up to Negatives items uniformly by Seq, with a
// generator seeded by the event id.
func (b *batch) uniformNegatives(ev *featurestore.Event, easy []string) []string {
	n := b.m.opts.Negatives
	total := b.meta.Items
	var out []string
	h := splitmix(fnv64(ev.ID) ^ 0x756e69)
	for tries := 0; len(out) < n && tries < 4*n && total > 1; tries++ {
		h = splitmix(h)
		id := b.itemBySeq(int64(h % uint64(total)))
		if id != "" && id != ev.ItemID && !slices.Contains(easy, id) && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// pairWithHistory adds the event's pairs with the user's newest history
// items to both items' neighbour records.
func (b *batch) pairWithHistory(ev *featurestore.Event, um *User) error {
	m := b.m
	o := &m.opts
	fwd := float64(ev.TS) / m.decayMS
	self, err := b.neighborRecord(ev.ItemID)
	if err != nil {
		return err
	}
	logW := m.logWeight[ev.Behavior]
	self.LogMass = featurestore.LogAddExp2(self.LogMass, logW+fwd)
	self.dirty = true
	selfH := m.intern(ev.ItemID)
	damp := -0.5 * math.Log2(o.UserAlpha+float64(um.Events))
	paired := 0
	for _, h := range um.History {
		if paired == o.PairCap {
			break
		}
		if h.Item == ev.ItemID {
			continue
		}
		gap := math.Abs(float64(ev.TS - h.TS))
		if gap > float64(o.PairWindow.Milliseconds()) {
			break
		}
		paired++
		m.meta.Pairs++
		other, err := b.neighborRecord(h.Item)
		if err != nil {
			return err
		}
		lw := 0.5*(logW+m.logWeight[h.Behavior]) + damp - gap/m.pairMS + fwd
		self.add(m.intern(h.Item), lw, other.LogMass, o.Neighbors, m.names)
		other.add(selfH, lw, self.LogMass, o.Neighbors, m.names)
	}
	return nil
}

// Write writes the batch's model records and meta into pb, and lists
// what Publish will change.
func (b *batch) Write(pb *pebble.Batch) error {
	b.prepare()
	// In key order (prepare sorts the lists), as the store writes its
	// records (see featurestore.tileWork): the memtable inserts them faster.
	var buf []byte
	for _, id := range b.pub.users {
		buf = b.users[id].appendTo(buf[:0])
		if err := pb.Set(userModelKey(id), buf, nil); err != nil {
			return err
		}
	}
	for i, id := range b.pub.items {
		buf = b.pub.models[i].appendTo(buf[:0])
		if err := pb.Set(itemModelKey(id), buf, nil); err != nil {
			return err
		}
	}
	for _, id := range b.pub.neighbors { // the changed ones alone
		r := b.neighbors[id]
		// A pruned record is written whole; otherwise only what the batch
		// changed, merged into the stored record (pairs.go).
		buf = r.appendTo(buf[:0], b.m.names, !r.full)
		var err error
		if r.full {
			err = pb.Set(neighborKey(id), buf, nil)
		} else {
			err = pb.Merge(neighborKey(id), buf, nil)
		}
		if err != nil {
			return err
		}
	}
	if len(b.users) > 0 {
		return b.m.dirty.write(b.meta, func(k, v []byte) error { return pb.Set(k, v, nil) })
	}
	return nil
}

// Publish implements featurestore.LearnBatch: once the batch's Pebble
// batch is committed, while the store publishes its version, it makes
// what readers see of the models that version: the factor table, the read
// caches and the published ranker. It does no more, since readers wait
// for it: the lists it works from are made beforehand (prepare, from
// Write), and the writer's own caches follow in Commit.
func (b *batch) Publish() {
	m := b.m
	if !b.pub.ready {
		b.prepare()
	}
	if len(b.pub.users) > 0 {
		m.userReads.Replace(b.pub.users, b.pub.freshUsers)
	}
	if len(b.pub.items) > 0 {
		m.itemReads.Replace(b.pub.items, b.pub.freshItems)
	}
	// One lock for the whole batch: readers scanning the table (MF
	// candidates) wait once, not once per item.
	m.table.Lock()
	indexed := 0 // rows the MF index covers
	if x := m.mf.index.Load(); x != nil {
		indexed = x.n
	}
	d := m.opts.Dim
	for i, id := range b.pub.items {
		it := b.pub.models[i]
		if len(it.Vec) != d {
			continue
		}
		if seq := int(it.Seq); seq < len(m.table.ids) && m.table.ids[seq] == id {
			copy(m.table.vecs[seq*d:], it.Vec) // a row the table has: its factors alone
		} else {
			m.setVecLocked(id, it.Seq, it.Vec)
		}
		if it.Seq < int64(indexed) {
			b.vecUpdates++
		}
	}
	b.tableItems = len(m.table.idx)
	m.table.Unlock()
	if len(b.pub.neighbors) > 0 {
		m.reads.Replace(b.pub.neighbors, b.pub.freshNeighbors)
	}
	if b.meta.Ranker.publishedDirty {
		b.meta.Ranker.publishedDirty = false
		m.setPublished(&b.meta.Ranker)
	}
}

// prepare makes the lists Write and Publish work from: the users, items
// (with their models) and neighbour records the batch changed, each in id
// order.
func (b *batch) prepare() {
	p := &b.pub
	p.ready = true
	p.users = slices.Sorted(maps.Keys(b.users))
	p.items = slices.Sorted(maps.Keys(b.items))
	p.models = make([]*Item, len(p.items))
	for i, id := range p.items {
		p.models[i] = b.items[id]
	}
	p.neighbors = p.neighbors[:0]
	for id, r := range b.neighbors {
		if r.dirty {
			p.neighbors = append(p.neighbors, id)
		}
	}
	slices.Sort(p.neighbors)
	b.freshen()
}

// freshen makes the readers' copies of the changed records they have
// cached (prepare): a hot record changes in most batches, and dropping it
// from the readers' caches at every publication made about half of their
// lookups under ingest read Pebble again. The copies are made before the
// commit, so the publication only swaps them in.
func (b *batch) freshen() {
	m, p := b.m, &b.pub
	p.freshUsers, p.freshItems, p.freshNeighbors = nil, nil, nil
	for _, id := range p.users {
		if m.userReads.Cached(id) {
			if p.freshUsers == nil {
				p.freshUsers = make(map[string]*User)
			}
			p.freshUsers[id] = b.users[id].clone()
		}
	}
	for i, id := range p.items {
		if m.itemReads.Cached(id) {
			if p.freshItems == nil {
				p.freshItems = make(map[string]*Item)
			}
			p.freshItems[id] = p.models[i].clone()
		}
	}
	for _, id := range p.neighbors {
		if m.reads.Cached(id) {
			if p.freshNeighbors == nil {
				p.freshNeighbors = make(map[string]*neighborRecord)
			}
			p.freshNeighbors[id] = m.readerRecord(b.neighbors[id])
		}
	}
}

// Commit implements featurestore.LearnBatch: after the publication, the
// batch's records become the writer's cached ones, and the MF index is
// rebuilt in the background when the table has changed enough.
func (b *batch) Commit() {
	m := b.m
	for id, u := range b.users {
		m.users.Add(id, u)
	}
	m.maybeBuildMFIndex(b.tableItems, b.vecUpdates)
	for id, it := range b.items {
		m.items.Add(id, it)
	}
	for id, r := range b.neighbors {
		if r.dirty {
			r.committed()
			m.neighbors.Add(id, r)
		} else if _, cached := m.neighbors.Peek(id); !cached && len(r.P) > 0 {
			m.neighbors.Add(id, r) // a committed record, read for scoring
		}
	}
}

// CacheStats returns the models' record caches: the writer's users,
// items and neighbour records, and the readers'.
func (m *Models) CacheStats() []featurestore.CacheStat {
	return []featurestore.CacheStat{
		featurestore.NewCacheStat("model_users", m.users),
		featurestore.NewCacheStat("model_items", m.items),
		featurestore.NewCacheStat("model_neighbors", m.neighbors),
		featurestore.NewCacheStat("model_user_reads", m.userReads),
		featurestore.NewCacheStat("model_item_reads", m.itemReads),
		featurestore.NewCacheStat("model_neighbor_reads", m.reads),
	}
}

// Abort implements featurestore.Learner: it drops decoded state that a
// failed batch may have modified and reloads the committed state.
func (m *Models) Abort() error {
	m.reads.Clear()
	m.userReads.Clear()
	m.itemReads.Clear()
	m.expired = m.expired[:0]
	m.expiredUsers = m.expiredUsers[:0]
	m.users.Purge()
	m.items.Purge()
	m.neighbors.Purge()
	m.table.Lock()
	m.table.idx = make(map[string]int32)
	m.table.ids, m.table.vecs = nil, nil
	m.invalidateMFIndexLocked()
	m.table.Unlock()
	return m.load()
}

// Close implements featurestore.Learner: it stops the background build
// of the MF index, if one runs, and waits for it. The store's Close calls
// it; it is safe to call more than once.
func (m *Models) Close() error {
	m.closeMFIndex()
	return nil
}

// Freeze stops (or resumes) learning: events still update features and
// user histories, but neighbours, factors and ranker weights stay as they
// are. Evaluation uses it to measure a model trained once.
func (m *Models) Freeze(frozen bool) { m.frozen.Store(frozen) }

// ExpireUser implements featurestore.Learner: it deletes an expired
// user's model record.
func (m *Models) ExpireUser(b *pebble.Batch, id string) error {
	m.users.Remove(id)
	m.expiredUsers = append(m.expiredUsers, id)
	return b.Delete(userModelKey(id), nil)
}

// ExpireItem implements featurestore.Learner: it deletes an expired
// item's model records and its row of the factor table. Neighbour lists
// of other items may still name it until their pairs are evicted.
func (m *Models) ExpireItem(b *pebble.Batch, id string) error {
	m.items.Remove(id)
	m.neighbors.Remove(id)
	m.expired = append(m.expired, id)
	if err := b.Delete(itemModelKey(id), nil); err != nil {
		return err
	}
	return b.Delete(neighborKey(id), nil)
}

// ExpireCommitted implements featurestore.Learner: the expired items'
// records are gone from Pebble, so their rows of the factor table and
// their neighbour records in the read cache go too (while the store
// publishes the expiry's version).
func (m *Models) ExpireCommitted() {
	if len(m.expiredUsers) > 0 {
		m.userReads.Invalidate(m.expiredUsers...)
		m.expiredUsers = m.expiredUsers[:0]
	}
	if len(m.expired) == 0 {
		return
	}
	m.table.Lock()
	for _, id := range m.expired {
		if i, ok := m.table.idx[id]; ok {
			delete(m.table.idx, id)
			m.table.ids[i] = ""
		}
	}
	m.table.Unlock()
	m.reads.Invalidate(m.expired...)
	m.itemReads.Invalidate(m.expired...)
	m.expired = m.expired[:0]
}

// initVec is the deterministic initial factor vector of id: small values
// from a hash of the id, so that replays produce the same model.
func initVec(id string, dim int) []float32 {
	v := make([]float32, dim)
	h := fnv64(id)
	scale := float32(0.1 / math.Sqrt(float64(dim)))
	for i := range v {
		h = splitmix(h)
		v[i] = (float32(h>>40)/float32(1<<24)*2 - 1) * scale
	}
	return v
}

func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// rankerSampled reports whether the ranker trains on the event with id,
// for a sample share: a hash of the id, so the choice does not depend on
// batches, restarts or replays.
func rankerSampled(id string, share float64) bool {
	if share >= 1 {
		return true
	}
	return float64(splitmix(fnv64(id)^0x72616e6b)>>11)/(1<<53) < share
}

// sgdStep takes one logistic-loss SGD step on the pair (p, q) with the
// given label and weight.
func sgdStep(p, q []float32, label, weight, lr, reg float32) {
	var dot float32
	for i := range p {
		dot += p[i] * q[i]
	}
	pred := float32(1 / (1 + math.Exp(-float64(dot))))
	g := weight * (label - pred)
	for i := range p {
		pi, qi := p[i], q[i]
		p[i] += lr * (g*qi - reg*pi)
		q[i] += lr * (g*pi - reg*qi)
	}
}

func pushHistory(um *User, ev *featurestore.Event, capN int) {
	e := Interaction{Item: ev.ItemID, TS: ev.TS, Behavior: ev.Behavior, Count: 1}
	for i, h := range um.History {
		if h.Item == ev.ItemID {
			um.History[i].Behavior = Strongest(h.Behavior, ev.Behavior)
			if h.Count < 255 {
				um.History[i].Count++
			}
			if ev.TS < h.TS {
				return
			}
			e.Behavior, e.Count = um.History[i].Behavior, um.History[i].Count
			um.History = append(um.History[:i], um.History[i+1:]...)
			break
		}
	}
	pos := len(um.History)
	for i, h := range um.History {
		if e.TS >= h.TS {
			pos = i
			break
		}
	}
	if pos >= capN {
		return
	}
	um.History = slices.Insert(um.History, pos, e)
	if len(um.History) > capN {
		um.History = um.History[:capN]
	}
}

// Strongest returns the behavior with the larger weight in funnel terms:
// purchase > cart > fav > view.
func Strongest(a, b featurestore.Behavior) featurestore.Behavior {
	rank := [numBehaviors]int{featurestore.BehaviorView: 0, featurestore.BehaviorFav: 1, featurestore.BehaviorCart: 2, featurestore.BehaviorPurchase: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// sim is the similarity of r's item with n as of the decay reference fwd
// (event time / decay half-life): the decayed co-occurrence over the
// geometric mean of the two masses plus the shrinkage.
func (r *neighborRecord) sim(n *neighbor, fwd, shrinkage float64) float64 {
	return pairSim(r.LogMass, n.LogC, n.LogMass, fwd, shrinkage)
}

// pairSim is the similarity of an item of log2 mass logMass with a partner
// of log2 mass partnerMass and log2 co-occurrence logC, as of fwd.
func pairSim(logMass, logC, partnerMass, fwd, shrinkage float64) float64 {
	c := math.Exp2(logC - fwd)
	mass := math.Exp2((logMass+partnerMass)/2 - fwd)
	return c / (mass + shrinkage)
}
