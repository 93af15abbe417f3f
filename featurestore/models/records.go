package models

import (
	"encoding/binary"
	"math"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/codec"
)

// Model keys (the store's keys are in featurestore/keys.go):
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

// KeyPrefixes are the prefixes of the models' per-user and per-item
// records (for featurestore.Store.DiskUsage).
func KeyPrefixes() (users, items [][]byte) {
	return [][]byte{prefixUserModel}, [][]byte{prefixItemModel, prefixNeighbors}
}

const modelVersion = 1

// metaVersion is the encoding of keyModels: version 2 added the ranker's
// history weights (a version 1 value decodes with zeros for them), version
// 3 the decay half-life of the neighbour records (earlier values were
// learned with the old default, legacyDecayMS).
const metaVersion = 3

// legacyDecayMS is the decay half-life of the neighbour records of a data
// dir written before the meta recorded it: the default until then, 7 days.
const legacyDecayMS = 7 * 24 * 3600 * 1000

func makeKey(prefix []byte, id string) []byte {
	return append(append(make([]byte, 0, len(prefix)+len(id)), prefix...), id...)
}

func neighborKey(id string) []byte  { return makeKey(prefixNeighbors, id) }
func userModelKey(id string) []byte { return makeKey(prefixUserModel, id) }
func itemModelKey(id string) []byte { return makeKey(prefixItemModel, id) }

// numBehaviors is the number of behaviors (featurestore.Behaviors).
const numBehaviors = int(featurestore.BehaviorPurchase) + 1

// Interaction is one item of a user's model history.
type Interaction struct {
	Item     string
	TS       int64                 // newest event time with the item
	Behavior featurestore.Behavior // strongest behavior with the item (funnel order by weight)
	Count    uint8                 // events with the item (saturates at 255)
}

// User is the model state of one user.
type User struct {
	History []Interaction // distinct items, newest first, at most HistoryCap
	Events  int64
	Vec     []float32 // MF factors; nil until the first event
}

// Item is the model state of one item.
type Item struct {
	Seq   int64 // creation order: the item's row in the factor table
	Vec   []float32
	Users []featurestore.Recent // recent distinct users, newest first
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

func (m *User) appendTo(b []byte) []byte {
	e := codec.Encoder{B: append(b, modelVersion)}
	e.Varint(m.Events)
	e.Uvarint(uint64(len(m.History)))
	for _, h := range m.History {
		e.Str(h.Item)
		e.Varint(h.TS)
		e.B = append(e.B, byte(h.Behavior), h.Count)
	}
	putVec(&e, m.Vec)
	return e.B
}

func (m *User) decode(b []byte) error {
	d := codec.Decoder{B: b}
	d.Version(modelVersion)
	m.Events = d.Varint()
	n := d.Uvarint()
	if n > 1000 {
		return featurestore.ErrCorrupt
	}
	m.History = make([]Interaction, 0, n)
	for range n {
		item := d.Str()
		ts := d.Varint()
		beh := d.Byte()
		if beh >= byte(numBehaviors) {
			return featurestore.ErrCorrupt
		}
		m.History = append(m.History, Interaction{Item: item, TS: ts, Behavior: featurestore.Behavior(beh), Count: d.Byte()})
	}
	m.Vec = getVec(&d)
	return d.Done()
}

func (m *Item) appendTo(b []byte) []byte {
	e := codec.Encoder{B: append(b, modelVersion)}
	e.Varint(m.Seq)
	putVec(&e, m.Vec)
	e.Uvarint(uint64(len(m.Users)))
	for _, r := range m.Users {
		e.Str(r.ID)
		e.Varint(r.TS)
	}
	return e.B
}

func (m *Item) decode(b []byte) error {
	d := codec.Decoder{B: b}
	d.Version(modelVersion)
	m.Seq = d.Varint()
	if m.Seq < 0 || m.Seq > 1<<31 {
		return featurestore.ErrCorrupt
	}
	m.Vec = getVec(&d)
	if n := d.Uvarint(); n <= 1000 {
		m.Users = make([]featurestore.Recent, 0, n)
		for range n {
			id := d.Str()
			m.Users = append(m.Users, featurestore.Recent{ID: id, TS: d.Varint()})
		}
	} else {
		m.Users = nil
		d.Fail()
	}
	return d.Done()
}

func (r *neighborRecord) appendTo(b []byte) []byte {
	e := codec.Encoder{B: append(b, modelVersion)}
	e.F64(r.LogMass)
	e.Uvarint(uint64(len(r.List)))
	for _, n := range r.List {
		e.Str(n.ID)
		e.F64(n.LogC)
		e.F64(n.LogMass)
	}
	return e.B
}

func (r *neighborRecord) decode(b []byte) error {
	d := codec.Decoder{B: b}
	if v := d.Byte(); v != modelVersion && v != neighborDeltaVersion {
		return featurestore.ErrCorrupt
	}
	r.LogMass = d.F64()
	n := d.Uvarint()
	if n > 2000 {
		return featurestore.ErrCorrupt
	}
	r.List = make([]neighbor, 0, n)
	for range n {
		id := d.Str()
		c := d.F64()
		r.List = append(r.List, neighbor{ID: id, LogC: c, LogMass: d.F64()})
	}
	r.index = nil
	return d.Done()
}

func putVec(e *codec.Encoder, v []float32) {
	e.Uvarint(uint64(len(v)))
	for _, f := range v {
		e.B = binary.LittleEndian.AppendUint32(e.B, math.Float32bits(f))
	}
}

func getVec(d *codec.Decoder) []float32 {
	n := d.Uvarint()
	if n > 256 || uint64(len(d.B)) < 4*n {
		d.Fail()
		return nil
	}
	if n == 0 {
		return nil
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(d.B[4*i:]))
	}
	d.B = d.B[4*n:]
	return v
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
	// DecayMS is the decay half-life (ms) the neighbour records' log
	// values are expressed in (see Models.rescaleNeighbors).
	DecayMS int64
}

func (m *modelMeta) appendTo(b []byte) []byte {
	e := codec.Encoder{B: append(b, metaVersion)}
	e.Uvarint(uint64(len(m.Ring)))
	for _, id := range m.Ring {
		e.Str(id)
	}
	e.Uvarint(uint64(m.RingPos))
	e.Varint(m.Learned)
	e.Varint(m.Pairs)
	e.Varint(m.LastTS)
	e.Varint(m.Items)
	m.Ranker.encode(&e)
	e.Varint(m.DecayMS)
	return e.B
}

func (m *modelMeta) decode(b []byte) error {
	d := codec.Decoder{B: b}
	v := d.Byte()
	if v < modelVersion || v > metaVersion {
		return featurestore.ErrCorrupt
	}
	n := d.Uvarint()
	if n > negRingSize {
		return featurestore.ErrCorrupt
	}
	m.Ring = make([]string, 0, negRingSize)
	for range n {
		m.Ring = append(m.Ring, d.Str())
	}
	pos := d.Uvarint()
	if pos >= negRingSize || (n < negRingSize && pos != n%negRingSize) {
		return featurestore.ErrCorrupt
	}
	m.RingPos = int(pos)
	m.Learned, m.Pairs, m.LastTS, m.Items = d.Varint(), d.Varint(), d.Varint(), d.Varint()
	m.Ranker.decode(&d, v >= 2)
	m.DecayMS = legacyDecayMS
	if v >= 3 {
		m.DecayMS = d.Varint()
		if m.DecayMS <= 0 {
			d.Fail()
		}
	}
	return d.Done()
}
