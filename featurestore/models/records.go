package models

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync/atomic"

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
// learned with the old default, legacyDecayMS) and moved the negative ring
// and the ranker's rolling window out of the value into chunk keys
// (ringChunkKey, winChunkKey): a batch rewrites the chunks it changed, not
// the 4,096 ring ids and 10,000 window entries (about 120 KB) whole, which
// cost small batches (an evaluation applies a few events at a time) more
// than everything else they wrote.
const metaVersion = 3

// Entries per chunk key of the ring and of the window.
const (
	ringChunk = 256
	winChunk  = 512
)

// ringChunkKey and winChunkKey are the keys of chunk c of the ring (ids
// c·ringChunk on) and of the ranker's window (entries c·winChunk on).
func ringChunkKey(c int) []byte {
	return binary.BigEndian.AppendUint32([]byte(keyModels+"/r"), uint32(c))
}

func winChunkKey(c int) []byte {
	return binary.BigEndian.AppendUint32([]byte(keyModels+"/w"), uint32(c))
}

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

// clone returns a copy of u that shares nothing mutable with it.
func (u *User) clone() *User {
	return &User{History: slices.Clone(u.History), Events: u.Events, Vec: slices.Clone(u.Vec)}
}

// clone returns a copy of it that shares nothing mutable with it.
func (it *Item) clone() *Item {
	return &Item{Seq: it.Seq, Vec: slices.Clone(it.Vec), Users: slices.Clone(it.Users)}
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
	// simAt is the similarity of every pair as of the last decay reference
	// asked (simsAt): the readers' cached records are shared, and the
	// requests of one version ask at the same read clock under the event
	// clock.
	simAt atomic.Pointer[pairSims]
}

// pairSims are a record's similarities as of one decay reference and
// shrinkage.
type pairSims struct {
	fwd, shrinkage float64
	v              []float64
}

// simsAt returns the similarity of every pair of r (in List's order) as
// of fwd: r.sim of each, computed once per reference.
func (r *neighborRecord) simsAt(fwd, shrinkage float64) []float64 {
	if p := r.simAt.Load(); p != nil && p.fwd == fwd && p.shrinkage == shrinkage {
		return p.v
	}
	v := make([]float64, len(r.List))
	for j := range r.List {
		v[j] = r.sim(&r.List[j], fwd, shrinkage)
	}
	r.simAt.Store(&pairSims{fwd, shrinkage, v})
	return v
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
	r.simAt.Store(nil)
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

// appendTo encodes the meta's own value: the ring's and the window's
// lengths but not their entries, which are in the chunks (appendChunk).
func (m *modelMeta) appendTo(b []byte) []byte { return m.appendVersion(b, metaVersion) }

// appendVersion encodes the value as version v wrote it: before version
// 3 with the ring's ids and the window's entries inline and without the
// decay half-life (the tests' older values; v 2 or 3).
func (m *modelMeta) appendVersion(b []byte, v byte) []byte {
	inline := v < 3
	e := codec.Encoder{B: append(b, v)}
	e.Uvarint(uint64(len(m.Ring)))
	if inline {
		for _, id := range m.Ring {
			e.Str(id)
		}
	}
	e.Uvarint(uint64(m.RingPos))
	e.Varint(m.Learned)
	e.Varint(m.Pairs)
	e.Varint(m.LastTS)
	e.Varint(m.Items)
	m.Ranker.encode(&e, inline)
	if !inline {
		e.Varint(m.DecayMS)
	}
	return e.B
}

// decode decodes the meta's value. For version 3 the ring and the window
// have their lengths and zero entries until loadChunks fills them;
// inline reports whether the value held them itself (versions 1 and 2).
func (m *modelMeta) decode(b []byte) error {
	_, err := m.decodeValue(b)
	return err
}

func (m *modelMeta) decodeValue(b []byte) (inline bool, err error) {
	d := codec.Decoder{B: b}
	v := d.Byte()
	if v < modelVersion || v > metaVersion {
		return false, featurestore.ErrCorrupt
	}
	inline = v < 3
	n := d.Uvarint()
	if n > negRingSize {
		return false, featurestore.ErrCorrupt
	}
	m.Ring = make([]string, 0, negRingSize)
	if inline {
		for range n {
			m.Ring = append(m.Ring, d.Str())
		}
	} else {
		m.Ring = m.Ring[:n]
	}
	pos := d.Uvarint()
	if pos >= negRingSize || (n < negRingSize && pos != n%negRingSize) {
		return false, featurestore.ErrCorrupt
	}
	m.RingPos = int(pos)
	m.Learned, m.Pairs, m.LastTS, m.Items = d.Varint(), d.Varint(), d.Varint(), d.Varint()
	m.Ranker.decode(&d, v >= 2, inline)
	m.DecayMS = legacyDecayMS
	if v >= 3 {
		m.DecayMS = d.Varint()
		if m.DecayMS <= 0 {
			d.Fail()
		}
	}
	return inline, d.Done()
}

// chunks returns how many chunk keys the ring and the window take.
func (m *modelMeta) chunks() (ring, win int) {
	return (len(m.Ring) + ringChunk - 1) / ringChunk, (len(m.Ranker.Labels) + winChunk - 1) / winChunk
}

// appendChunk encodes ring chunk c (win false) or window chunk c.
func (m *modelMeta) appendChunk(b []byte, win bool, c int) []byte {
	e := codec.Encoder{B: b}
	if !win {
		for _, id := range m.Ring[c*ringChunk : min(len(m.Ring), (c+1)*ringChunk)] {
			e.Str(id)
		}
		return e.B
	}
	return m.Ranker.appendWindow(e.B, c*winChunk, min(len(m.Ranker.Labels), (c+1)*winChunk))
}

// decodeChunk fills ring chunk c (win false) or window chunk c from b,
// which must hold exactly its entries.
func (m *modelMeta) decodeChunk(b []byte, win bool, c int) error {
	d := codec.Decoder{B: b}
	if !win {
		for i := c * ringChunk; i < min(len(m.Ring), (c+1)*ringChunk); i++ {
			m.Ring[i] = d.Str()
		}
		return d.Done()
	}
	m.Ranker.decodeWindow(&d, c*winChunk, min(len(m.Ranker.Labels), (c+1)*winChunk))
	return d.Done()
}

// loadChunks reads the ring's and the window's chunks through read (of
// one state version) after decode of a version 3 value.
func (m *modelMeta) loadChunks(read func(key []byte) ([]byte, bool, error)) error {
	ring, win := m.chunks()
	for _, part := range []struct {
		win bool
		n   int
		key func(int) []byte
	}{{false, ring, ringChunkKey}, {true, win, winChunkKey}} {
		for c := range part.n {
			v, ok, err := read(part.key(c))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: %w", part.key(c), featurestore.ErrCorrupt)
			}
			if err := m.decodeChunk(v, part.win, c); err != nil {
				return fmt.Errorf("%q: %w", part.key(c), err)
			}
		}
	}
	return nil
}

// metaDirty tracks the chunks of the meta that changed since it was last
// written (all of them after a version 1 or 2 value was read).
type metaDirty struct {
	all       bool
	ring, win map[int]bool
}

func (d *metaDirty) mark(win bool, i int) {
	if d.all {
		return
	}
	if win {
		if d.win == nil {
			d.win = make(map[int]bool)
		}
		d.win[i/winChunk] = true
		return
	}
	if d.ring == nil {
		d.ring = make(map[int]bool)
	}
	d.ring[i/ringChunk] = true
}

// write sets the meta's value and its changed chunks (every chunk with
// all) through set, and clears the marks.
func (d *metaDirty) write(m *modelMeta, set func(k, v []byte) error) error {
	if err := set([]byte(keyModels), m.appendTo(nil)); err != nil {
		return err
	}
	ring, win := m.chunks()
	for _, part := range []struct {
		win   bool
		n     int
		dirty map[int]bool
		key   func(int) []byte
	}{{false, ring, d.ring, ringChunkKey}, {true, win, d.win, winChunkKey}} {
		for c := range part.n {
			if d.all || part.dirty[c] {
				if err := set(part.key(c), m.appendChunk(nil, part.win, c)); err != nil {
					return err
				}
			}
		}
	}
	*d = metaDirty{}
	return nil
}
