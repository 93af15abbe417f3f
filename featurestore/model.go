package featurestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	lru "github.com/hashicorp/golang-lru/v2"
)

// ModelOptions are the hyperparameters of the incremental models. Zero
// fields take the defaults documented on each field.
type ModelOptions struct {
	// HistoryCap is how many distinct recent interactions a user's model
	// history keeps: the history that item pairs and reasons come from
	// (Swing's cap on very active users). Default 50.
	HistoryCap int
	// PairCap is how many of the newest history items a new event is
	// paired with. Default 5 (10 gave the same NDCG@10 on the Taobao
	// sample and applied about 9% fewer events per second).
	PairCap int
	// PairWindow: history items older than this before a new event are
	// not paired with it. Default 72h.
	PairWindow time.Duration
	// PairHalfLife decays a pair's weight with the time between its two
	// events. Default 24h.
	PairHalfLife time.Duration
	// DecayHalfLife is the forward decay of co-occurrence weights and item
	// masses: older evidence counts less. Default 7 days (168h).
	DecayHalfLife time.Duration
	// UserAlpha damps very active users as Swing does: a user's pairs
	// weigh 1/sqrt(UserAlpha + events of the user). Default 5.
	UserAlpha float64
	// Shrinkage is added to the denominator of the cosine similarity so
	// that pairs seen once between rare items do not score 1. Default 1.
	Shrinkage float64
	// Neighbors is how many neighbours each item exposes; up to half as
	// many again are kept so that new pairs can grow. Default 100.
	Neighbors int
	// RecentUsers is how many recent users each item keeps for user-user
	// similarity. Default 50.
	RecentUsers int
	// Dim is the number of latent factors of matrix factorization.
	// Default 32.
	Dim int
	// LearningRate and Reg are the SGD step and L2 penalty of matrix
	// factorization. Defaults 0.05 and 0.01.
	LearningRate, Reg float64
	// Negatives is how many sampled negatives each event trains with:
	// matrix factorization draws them from recently interacted items (so
	// roughly by popularity), the ranker uniformly from the catalogue.
	// Default 4.
	Negatives int
	// FTRL-Proximal hyperparameters of the ranker. Defaults: alpha 1,
	// beta 1, L1 0.01, L2 0.1 (on the Taobao sample, alpha 0.05 left the
	// ranker underfit: NDCG@10 fell below item-to-item alone).
	RankerAlpha, RankerBeta, RankerL1, RankerL2 float64
	// RankerWindow is how many recent examples the rolling AUC and log
	// loss cover. Default 10000.
	RankerWindow int
	// PublishEvery is how many examples pass between publication checks.
	// Default 5000.
	PublishEvery int
	// PublishMargin: a new weight version is published only if its rolling
	// AUC is at least the published version's minus this. Default 0.005.
	PublishMargin float64
	// RankerSample is the share of view events the ranker trains on,
	// chosen by a hash of the event id (so the same events whatever the
	// batches); every cart, fav and purchase trains it, since those are
	// what recommendations are judged by. Its examples are most of the
	// cost of applying an event with models (the user's context, 20
	// neighbour lists, five feature vectors). Default 0.25: on the Taobao
	// users sample it applied 31% more events per second than 1, with
	// NDCG@10 of full 0.0043 (discovery) and 0.0979 (re-engagement)
	// against 0.0042 and 0.0955; training on every non-view event as well
	// raised re-engagement to 0.0994 (discovery unchanged).
	RankerSample float64
	// RankerPairs is how many of the user's other history items (not
	// bought, drawn by a hash of the event id) a re-engagement — a cart,
	// fav or purchase of an item the user touched before — is contrasted
	// with in pairwise steps of the ranker's history weights; negative:
	// none. Default 10: on the Taobao users sample re-engagement NDCG@10
	// went from 0.0994 to 0.1150 (3 pairs among the newest 20 items
	// 0.1020, 6 0.1048, 12 0.1072; over the whole history 20 pairs 0.1144,
	// 50 0.1133), discovery unchanged (0.0043); 10 pairs cost about 4 % of
	// the CPU of applying an event.
	RankerPairs int
}

// EnsureDefaults fills in zero fields with their defaults.
func (o *ModelOptions) EnsureDefaults() {
	setInt := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setF := func(p *float64, v float64) {
		if *p <= 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setInt(&o.HistoryCap, 50)
	setInt(&o.PairCap, 5)
	setD(&o.PairWindow, 72*time.Hour)
	setD(&o.PairHalfLife, 24*time.Hour)
	setD(&o.DecayHalfLife, 7*24*time.Hour)
	setF(&o.UserAlpha, 5)
	setF(&o.Shrinkage, 1)
	setInt(&o.Neighbors, 100)
	setInt(&o.RecentUsers, 50)
	setInt(&o.Dim, 32)
	setF(&o.LearningRate, 0.05)
	setF(&o.Reg, 0.01)
	setInt(&o.Negatives, 4)
	setF(&o.RankerAlpha, 1)
	setF(&o.RankerBeta, 1)
	setF(&o.RankerL1, 0.01)
	setF(&o.RankerL2, 0.1)
	setInt(&o.RankerWindow, 10000)
	setInt(&o.PublishEvery, 5000)
	setF(&o.PublishMargin, 0.005)
	setF(&o.RankerSample, 0.25)
	if o.RankerPairs == 0 {
		o.RankerPairs = 10
	}
}

// Validate reports hyperparameters out of range, naming the field.
func (o *ModelOptions) Validate() error {
	switch {
	case o.HistoryCap > 1000:
		return errors.New("models.history-cap: at most 1000")
	case o.PairCap > o.HistoryCap:
		return fmt.Errorf("models.pair-cap: %d is more than models.history-cap %d", o.PairCap, o.HistoryCap)
	case o.Neighbors > 1000:
		return errors.New("models.neighbors: at most 1000")
	case o.Dim > 256:
		return errors.New("models.dim: at most 256")
	case o.Negatives > 50:
		return errors.New("models.negatives: at most 50")
	case o.LearningRate > 1:
		return errors.New("models.learning-rate: at most 1")
	case o.PublishMargin > 1:
		return errors.New("models.publish-margin: at most 1")
	case o.RankerSample > 1:
		return errors.New("models.ranker-sample: at most 1 (the share of events the ranker trains on)")
	}
	return nil
}

// Model keys (see keys.go for the rest of the layout):
//
//	n/<item_id>   neighbour record: the item's decayed mass and its co-occurring items
//	v/u/<user_id> user model record: history (item, time, strongest behavior) and MF factors
//	v/i/<item_id> item model record: MF factors and the item's recent users
//	m/models      model metadata: negative-sampling ring and the ranker (FTRL state, published weights, rolling metrics)
var (
	prefixNeighbors = []byte("n/")
	prefixUserModel = []byte("v/u/")
	prefixItemModel = []byte("v/i/")
)

const keyModels = "m/models"

const modelVersion = 1

// metaVersion is the encoding of keyModels: version 2 added the ranker's
// history weights; a version 1 value decodes with zeros for them.
const metaVersion = 2

func neighborKey(id string) []byte  { return makeKey(prefixNeighbors, id) }
func userModelKey(id string) []byte { return makeKey(prefixUserModel, id) }
func itemModelKey(id string) []byte { return makeKey(prefixItemModel, id) }

// histEntry is one item of a user's model history.
type histEntry struct {
	Item     string
	TS       int64    // newest event time with the item
	Behavior Behavior // strongest behavior with the item (funnel order by weight)
	Count    uint8    // events with the item (saturates at 255)
}

// userModel is the model state of one user.
type userModel struct {
	History []histEntry // distinct items, newest first, at most HistoryCap
	Events  int64
	Vec     []float32 // MF factors; nil until the first event
}

// itemModel is the model state of one item.
type itemModel struct {
	Seq   int64 // creation order: the item's row in the factor table
	Vec   []float32
	Users []Recent // recent distinct users, newest first
}

// neighbor is one co-occurring item in a neighbour record.
type neighbor struct {
	ID string
	// LogC is log2 of the decayed, weighted co-occurrence count (forward
	// decay: comparable across times, like Pop).
	LogC float64
	// LogMass is log2 of the partner's decayed mass when the pair was last
	// updated.
	LogMass float64
}

// neighborRecord holds an item's decayed mass and co-occurring items.
type neighborRecord struct {
	LogMass float64
	List    []neighbor
	index   map[string]int // ID → position in List; built lazily
	// dirty marks a record the batch changed; only those are written.
	dirty bool
}

func (r *neighborRecord) find(id string) int {
	if r.index == nil {
		r.index = make(map[string]int, len(r.List))
		for i, n := range r.List {
			r.index[n.ID] = i
		}
	}
	if i, ok := r.index[id]; ok {
		return i
	}
	return -1
}

func (m *userModel) appendTo(b []byte) []byte {
	e := encoder{b: append(b, modelVersion)}
	e.varint(m.Events)
	e.uvarint(uint64(len(m.History)))
	for _, h := range m.History {
		e.str(h.Item)
		e.varint(h.TS)
		e.b = append(e.b, byte(h.Behavior), h.Count)
	}
	e.vec(m.Vec)
	return e.b
}

func (m *userModel) decode(b []byte) error {
	d := decoder{b: b}
	d.modelVersion()
	m.Events = d.varint()
	n := d.uvarint()
	if n > 1000 {
		return ErrCorrupt
	}
	m.History = make([]histEntry, 0, n)
	for range n {
		item := d.str()
		ts := d.varint()
		beh := d.byte()
		if beh >= byte(numBehaviors) {
			return ErrCorrupt
		}
		m.History = append(m.History, histEntry{Item: item, TS: ts, Behavior: Behavior(beh), Count: d.byte()})
	}
	m.Vec = d.vec()
	return d.done()
}

func (m *itemModel) appendTo(b []byte) []byte {
	e := encoder{b: append(b, modelVersion)}
	e.varint(m.Seq)
	e.vec(m.Vec)
	e.recents(m.Users)
	return e.b
}

func (m *itemModel) decode(b []byte) error {
	d := decoder{b: b}
	d.modelVersion()
	m.Seq = d.varint()
	if m.Seq < 0 || m.Seq > 1<<31 {
		return ErrCorrupt
	}
	m.Vec = d.vec()
	m.Users = d.recentsN(1000)
	return d.done()
}

func (r *neighborRecord) appendTo(b []byte) []byte {
	e := encoder{b: append(b, modelVersion)}
	e.f64(r.LogMass)
	e.uvarint(uint64(len(r.List)))
	for _, n := range r.List {
		e.str(n.ID)
		e.f64(n.LogC)
		e.f64(n.LogMass)
	}
	return e.b
}

func (r *neighborRecord) decode(b []byte) error {
	d := decoder{b: b}
	if v := d.byte(); v != modelVersion && v != neighborDeltaVersion {
		return ErrCorrupt
	}
	r.LogMass = d.f64()
	n := d.uvarint()
	if n > 2000 {
		return ErrCorrupt
	}
	r.List = make([]neighbor, 0, n)
	for range n {
		id := d.str()
		c := d.f64()
		r.List = append(r.List, neighbor{ID: id, LogC: c, LogMass: d.f64()})
	}
	r.index = nil
	return d.done()
}

func (e *encoder) vec(v []float32) {
	e.uvarint(uint64(len(v)))
	for _, f := range v {
		e.b = binary.LittleEndian.AppendUint32(e.b, math.Float32bits(f))
	}
}

func (d *decoder) vec() []float32 {
	n := d.uvarint()
	if n > 256 || uint64(len(d.b)) < 4*n {
		d.err, d.b = true, nil
		return nil
	}
	if n == 0 {
		return nil
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(d.b[4*i:]))
	}
	d.b = d.b[4*n:]
	return v
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.err = true
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) modelVersion() {
	if d.byte() != modelVersion {
		d.err, d.b = true, nil
	}
}

func (d *decoder) recentsN(limit uint64) []Recent {
	n := d.uvarint()
	if n > limit {
		d.err, d.b = true, nil
		return nil
	}
	list := make([]Recent, 0, n)
	for range n {
		id := d.str()
		list = append(list, Recent{ID: id, TS: d.varint()})
	}
	return list
}

// negRing is the ring of recently interacted items that negatives are
// drawn from: an item appears in it as often as it is interacted with
// lately, so negatives follow popularity, as in word2vec-style sampling.
const negRingSize = 4096

// modelMeta is the value of keyModels.
type modelMeta struct {
	Ring    []string // at most negRingSize, written round-robin at RingPos
	RingPos int
	Ranker  rankerState
	Learned int64 // events the models learned from
	Pairs   int64 // co-occurrence pair updates
	LastTS  int64 // event time of the newest event learned
	Items   int64 // item models created: the next item's Seq
}

func (m *modelMeta) appendTo(b []byte) []byte {
	e := encoder{b: append(b, metaVersion)}
	e.uvarint(uint64(len(m.Ring)))
	for _, id := range m.Ring {
		e.str(id)
	}
	e.uvarint(uint64(m.RingPos))
	e.varint(m.Learned)
	e.varint(m.Pairs)
	e.varint(m.LastTS)
	e.varint(m.Items)
	m.Ranker.encode(&e)
	return e.b
}

func (m *modelMeta) decode(b []byte) error {
	d := decoder{b: b}
	v := d.byte()
	if v != modelVersion && v != metaVersion {
		return ErrCorrupt
	}
	n := d.uvarint()
	if n > negRingSize {
		return ErrCorrupt
	}
	m.Ring = make([]string, 0, negRingSize)
	for range n {
		m.Ring = append(m.Ring, d.str())
	}
	pos := d.uvarint()
	if pos >= negRingSize || (n < negRingSize && pos != n%negRingSize) {
		return ErrCorrupt
	}
	m.RingPos = int(pos)
	m.Learned, m.Pairs, m.LastTS, m.Items = d.varint(), d.varint(), d.varint(), d.varint()
	m.Ranker.decode(&d, v >= 2)
	return d.done()
}

// models is the in-memory side of the model state. Apply owns the caches
// and meta; the factor table is read by recommendations under its lock.
type models struct {
	opts    ModelOptions
	decayMS float64 // DecayHalfLife in ms
	pairMS  float64 // PairHalfLife in ms

	users     *lru.Cache[string, *userModel]
	items     *lru.Cache[string, *itemModel]
	neighbors *lru.Cache[string, *pairRecord]
	meta      *modelMeta
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
	// published is the ranker's served weights (a copy of meta's).
	published struct {
		sync.RWMutex
		w       []float64
		hw      []float64 // the history weights (rankerState.HPublished)
		version int64
	}
	seed maphash.Seed
}

// modelBatch holds the model records one Apply changes, decoded, until
// they are written at its end.
type modelBatch struct {
	users     map[string]*userModel
	items     map[string]*itemModel
	neighbors map[string]*pairRecord
	meta      *modelMeta
	newSeq    map[int64]string // items created by the batch, by Seq
	// itemRecs are the item feature records the batch has loaded (with
	// the batch's earlier events applied).
	itemRecs map[string]*itemState
	// newUsers are the users without a feature record before the batch:
	// like new items (newItem), they have no model records either (models
	// are created and expired with the feature records), so none are read.
	newUsers map[string]bool
}

// newItem reports whether item id had no feature record before the batch.
func (mb *modelBatch) newItem(id string) bool {
	st, ok := mb.itemRecs[id]
	return ok && !st.existed
}

func newModels(opts ModelOptions, cacheEntries int) *models {
	m := &models{opts: opts, decayMS: float64(opts.DecayHalfLife.Milliseconds()), pairMS: float64(opts.PairHalfLife.Milliseconds())}
	m.users, _ = lru.New[string, *userModel](cacheEntries)
	m.items, _ = lru.New[string, *itemModel](cacheEntries)
	// Neighbour records are the largest: up to 1.5 × Neighbors pairs of
	// about 21 bytes each in the writer's form (pairs.go).
	m.neighbors, _ = lru.New[string, *pairRecord](cacheEntries)
	m.handles = make(map[string]int32)
	m.table.idx = make(map[string]int32)
	m.seed = maphash.MakeSeed()
	return m
}

// loadModels reads the model metadata and the factor table.
func (s *Store) loadModels() error {
	m := s.models
	m.meta = &modelMeta{Ring: make([]string, 0, negRingSize)}
	m.meta.Ranker.init(numRankFeatures)
	if v, ok, err := s.get([]byte(keyModels)); err != nil {
		return err
	} else if ok {
		if err := m.meta.decode(v); err != nil {
			return fmt.Errorf("%s: %w", keyModels, err)
		}
	}
	m.setPublished(&m.meta.Ranker)
	var im itemModel
	return s.scanPrefix(prefixItemModel, func(id string, v []byte) error {
		if err := im.decode(v); err != nil {
			return fmt.Errorf("item model %q: %w", id, err)
		}
		m.setVec(id, im.Seq, im.Vec)
		return nil
	})
}

func (m *models) setPublished(r *rankerState) {
	m.published.Lock()
	m.published.w = slices.Clone(r.Published)
	m.published.hw = slices.Clone(r.HPublished)
	m.published.version = r.Version
	m.published.Unlock()
}

// setVec stores v as row seq (item id) of the factor table.
func (m *models) setVec(id string, seq int64, v []float32) {
	m.table.Lock()
	defer m.table.Unlock()
	m.setVecLocked(id, seq, v)
}

// setVecLocked is setVec with m.table locked.
func (m *models) setVecLocked(id string, seq int64, v []float32) {
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

// itemBySeq returns the item created seq-th, or "".
func (s *Store) itemBySeq(mb *modelBatch, seq int64) string {
	if id, ok := mb.newSeq[seq]; ok {
		return id
	}
	m := s.models
	m.table.RLock()
	defer m.table.RUnlock()
	if seq < int64(len(m.table.ids)) {
		return m.table.ids[seq]
	}
	return ""
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

func (s *Store) newModelBatch() *modelBatch {
	return &modelBatch{
		users: make(map[string]*userModel), items: make(map[string]*itemModel),
		neighbors: make(map[string]*pairRecord), meta: s.models.meta, newSeq: make(map[int64]string),
		newUsers: make(map[string]bool),
	}
}

func (s *Store) userModelFor(mb *modelBatch, id string) (*userModel, error) {
	if u, ok := mb.users[id]; ok {
		return u, nil
	}
	u, ok := s.models.users.Get(id)
	if !ok && mb.newUsers[id] {
		u = new(userModel)
	} else if !ok {
		var err error
		if u, _, err = s.readUserModel(id); err != nil {
			return nil, err
		}
	}
	mb.users[id] = u
	return u, nil
}

// itemModelFor returns item id's model as of the batch, creating it (with
// the next creation sequence number) when the item has none.
func (s *Store) itemModelFor(mb *modelBatch, id string) (*itemModel, error) {
	return s.loadItemModel(mb, id, true)
}

// existingItemModel is itemModelFor for an item that must already have a
// model: nil when it has none (it expired), without creating one.
func (s *Store) existingItemModel(mb *modelBatch, id string) (*itemModel, error) {
	return s.loadItemModel(mb, id, false)
}

func (s *Store) loadItemModel(mb *modelBatch, id string, create bool) (*itemModel, error) {
	if it, ok := mb.items[id]; ok {
		return it, nil
	}
	it, ok := s.models.items.Get(id)
	if !ok {
		var found bool
		var err error
		if mb.newItem(id) {
			it = new(itemModel)
		} else if it, found, err = s.readItemModel(id); err != nil {
			return nil, err
		}
		if !found {
			if !create {
				return nil, nil
			}
			it.Seq = mb.meta.Items
			mb.meta.Items++
			mb.newSeq[it.Seq] = id
		}
	}
	mb.items[id] = it
	return it, nil
}

// neighborsFor returns item id's neighbour record as of the batch, in the
// writer's form.
func (s *Store) neighborsFor(mb *modelBatch, id string) (*pairRecord, error) {
	if r, ok := mb.neighbors[id]; ok {
		return r, nil
	}
	r, ok := s.models.neighbors.Get(id)
	if !ok && mb.newItem(id) {
		r = &pairRecord{LogMass: math.Inf(-1)}
	} else if !ok {
		nr, err := s.readNeighbors(id)
		if err != nil {
			return nil, err
		}
		r = s.models.pairsFrom(nr)
	}
	mb.neighbors[id] = r
	return r, nil
}

// applyModels learns from ev, given the user's and item's feature records
// as they were before ev. It runs inside Apply, event by event, so the
// result does not depend on how events are split into batches.
func (s *Store) applyModels(mb *modelBatch, ev *Event, urec *UserRecord, irec *ItemRecord) error {
	m := s.models
	o := &m.opts
	um, err := s.userModelFor(mb, ev.UserID)
	if err != nil {
		return err
	}
	if s.modelsFrozen.Load() {
		// Frozen models: the history (a feature of the user) still moves.
		pushHistory(um, ev, o.HistoryCap)
		return nil
	}
	im, err := s.itemModelFor(mb, ev.ItemID)
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
	negs := s.drawNegatives(mb.meta, ev)
	negModels := make([]*itemModel, 0, len(negs))
	for _, id := range negs {
		// A ring item may have expired since: it is not a negative then
		// (and must not get a model again).
		nm, err := s.existingItemModel(mb, id)
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
	if ev.Behavior != BehaviorView || rankerSampled(ev.ID, o.RankerSample) {
		ctx, err := s.rankContextAt(mb, um, urec, ev.TS, false)
		if err != nil {
			return err
		}
		pos := candidateInfo{ID: ev.ItemID, Item: irec, Vec: im.Vec}
		if err := s.learnRanker(mb, ctx, &pos, 1); err != nil {
			return err
		}
		// Uniform negatives from the whole catalogue, so that the ranker
		// learns what popularity is worth (negatives drawn by popularity
		// teach it that popular items are negatives).
		for _, id := range s.uniformNegatives(mb, ev, negs) {
			rec, err := s.itemRecordFor(mb, id)
			if err != nil {
				return err
			}
			// Read the factors without marking the item's record dirty: the
			// ranker does not change it.
			vec := s.itemVec(id)
			if hm, ok := mb.items[id]; ok {
				vec = hm.Vec
			}
			neg := candidateInfo{ID: id, Item: rec, Vec: vec}
			if err := s.learnRanker(mb, ctx, &neg, 0); err != nil {
				return err
			}
		}
		// A re-engagement (a cart, fav or purchase of an item the user
		// touched before) also teaches the ranker which of the user's own
		// items comes back: pairwise steps against other history items.
		if ev.Behavior != BehaviorView && o.RankerPairs > 0 {
			if err := s.learnHistoryPairs(mb, ctx, ev, &pos); err != nil {
				return err
			}
		}
	}

	// 2. Matrix factorization: a logistic SGD step on the positive and
	// on each negative.
	w := float32(s.weights[ev.Behavior] / s.weights[BehaviorView])
	sgdStep(um.Vec, im.Vec, 1, w, float32(o.LearningRate), float32(o.Reg))
	for _, nm := range negModels {
		sgdStep(um.Vec, nm.Vec, 0, 1, float32(o.LearningRate), float32(o.Reg))
	}

	// 3. Item-item co-occurrence with the newest history items.
	if err := s.pairWithHistory(mb, ev, um); err != nil {
		return err
	}

	// 4. Histories, recent users and the negative ring.
	pushHistory(um, ev, o.HistoryCap)
	um.Events++
	im.Users = pushRecentN(im.Users, ev.UserID, ev.TS, o.RecentUsers)
	ring := mb.meta
	if len(ring.Ring) < negRingSize {
		ring.Ring = append(ring.Ring, ev.ItemID)
	} else {
		ring.Ring[ring.RingPos] = ev.ItemID
	}
	ring.RingPos = (ring.RingPos + 1) % negRingSize
	ring.Learned++
	ring.LastTS = max(ring.LastTS, ev.TS)
	return nil
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

// itemRecordFor returns the committed feature record of item id (from the
// writer's cache when it can).
func (s *Store) itemRecordFor(mb *modelBatch, id string) (*ItemRecord, error) {
	if st, ok := mb.itemRecs[id]; ok {
		return st.rec, nil
	}
	if rec, ok := s.items.Get(id); ok {
		return rec, nil
	}
	rec := &ItemRecord{Pop: math.Inf(-1)}
	if _, err := s.readItem(id, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// drawNegatives picks up to Negatives items from the ring, other than the
// event's item, with a generator seeded by the event id.
func (s *Store) drawNegatives(meta *modelMeta, ev *Event) []string {
	n := s.models.opts.Negatives
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
func (s *Store) uniformNegatives(mb *modelBatch, ev *Event, easy []string) []string {
	n := s.models.opts.Negatives
	total := mb.meta.Items
	var out []string
	h := splitmix(fnv64(ev.ID) ^ 0x756e69)
	for tries := 0; len(out) < n && tries < 4*n && total > 1; tries++ {
		h = splitmix(h)
		id := s.itemBySeq(mb, int64(h%uint64(total)))
		if id != "" && id != ev.ItemID && !slices.Contains(easy, id) && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
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

func pushHistory(um *userModel, ev *Event, capN int) {
	e := histEntry{Item: ev.ItemID, TS: ev.TS, Behavior: ev.Behavior, Count: 1}
	for i, h := range um.History {
		if h.Item == ev.ItemID {
			um.History[i].Behavior = strongest(h.Behavior, ev.Behavior)
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

// strongest returns the behavior with the larger weight in funnel terms:
// purchase > cart > fav > view.
func strongest(a, b Behavior) Behavior {
	rank := [numBehaviors]int{BehaviorView: 0, BehaviorFav: 1, BehaviorCart: 2, BehaviorPurchase: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// pairWithHistory adds the event's pairs with the user's newest history
// items to both items' neighbour records.
func (s *Store) pairWithHistory(mb *modelBatch, ev *Event, um *userModel) error {
	m := s.models
	o := &m.opts
	fwd := float64(ev.TS) / m.decayMS
	self, err := s.neighborsFor(mb, ev.ItemID)
	if err != nil {
		return err
	}
	logW := s.logWeight[ev.Behavior]
	self.LogMass = logAddExp2(self.LogMass, logW+fwd)
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
		s.models.meta.Pairs++
		other, err := s.neighborsFor(mb, h.Item)
		if err != nil {
			return err
		}
		lw := 0.5*(logW+s.logWeight[h.Behavior]) + damp - gap/m.pairMS + fwd
		self.add(m.intern(h.Item), lw, other.LogMass, o.Neighbors, m.names)
		other.add(selfH, lw, self.LogMass, o.Neighbors, m.names)
	}
	return nil
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

// flushModels writes the batch's model records and meta into b.
func (s *Store) flushModels(b *pebble.Batch, mb *modelBatch) error {
	var buf []byte
	for id, u := range mb.users {
		buf = u.appendTo(buf[:0])
		if err := b.Set(userModelKey(id), buf, nil); err != nil {
			return err
		}
	}
	for id, it := range mb.items {
		buf = it.appendTo(buf[:0])
		if err := b.Set(itemModelKey(id), buf, nil); err != nil {
			return err
		}
	}
	for id, r := range mb.neighbors {
		if !r.dirty {
			continue // loaded to score, not changed
		}
		// A pruned record is written whole; otherwise only what the batch
		// changed, merged into the stored record (pairs.go).
		buf = r.appendTo(buf[:0], s.models.names, !r.full)
		var err error
		if r.full {
			err = b.Set(neighborKey(id), buf, nil)
		} else {
			err = b.Merge(neighborKey(id), buf, nil)
		}
		if err != nil {
			return err
		}
	}
	if len(mb.users) > 0 {
		return b.Set([]byte(keyModels), mb.meta.appendTo(nil), nil)
	}
	return nil
}

// commitModels publishes the batch's records to the caches and factor
// table once its Pebble batch is committed.
func (s *Store) commitModels(mb *modelBatch) {
	m := s.models
	for id, u := range mb.users {
		m.users.Add(id, u)
	}
	// One lock for the whole batch: readers scanning the table (MF
	// candidates) wait once, not once per item.
	m.table.Lock()
	for id, it := range mb.items {
		m.setVecLocked(id, it.Seq, it.Vec)
	}
	m.table.Unlock()
	for id, it := range mb.items {
		m.items.Add(id, it)
	}
	for id, r := range mb.neighbors {
		if r.dirty {
			r.committed()
			m.neighbors.Add(id, r)
		} else if _, cached := m.neighbors.Peek(id); !cached && len(r.P) > 0 {
			m.neighbors.Add(id, r) // a committed record, read for scoring
		}
	}
	if mb.meta.Ranker.publishedDirty {
		mb.meta.Ranker.publishedDirty = false
		m.setPublished(&mb.meta.Ranker)
	}
}

// abortModels drops decoded state that a failed batch may have modified.
func (s *Store) abortModels() error {
	m := s.models
	m.users.Purge()
	m.items.Purge()
	m.neighbors.Purge()
	m.table.Lock()
	m.table.idx = make(map[string]int32)
	m.table.ids, m.table.vecs = nil, nil
	m.table.Unlock()
	return s.loadModels()
}

// FreezeModels stops (or resumes) learning: events still update features
// and user histories, but neighbours, factors and ranker weights stay as
// they are. Evaluation uses it to measure a model trained once.
func (s *Store) FreezeModels(frozen bool) { s.modelsFrozen.Store(frozen) }

// dropItemModel deletes an expired item's model records and its row of
// the factor table. Neighbour lists of other items may still name it
// until their pairs are evicted.
func (s *Store) dropItemModel(b *pebble.Batch, id string) error {
	m := s.models
	m.items.Remove(id)
	m.neighbors.Remove(id)
	m.table.Lock()
	if i, ok := m.table.idx[id]; ok {
		delete(m.table.idx, id)
		m.table.ids[i] = ""
	}
	m.table.Unlock()
	if err := b.Delete(itemModelKey(id), nil); err != nil {
		return err
	}
	return b.Delete(neighborKey(id), nil)
}
