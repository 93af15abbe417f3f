package models

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/codec"
)

// The writer's form of the item-item co-occurrence state, and how it
// reaches Pebble.
//
// Apply keeps the neighbour records it works on as pairRecords: partners
// are interned handles (int32) rather than strings, in three parallel
// slices scanned linearly (a record holds at most 1.5 × Neighbors pairs),
// so a record costs about 20 bytes a pair (and a 128-byte signature of its
// partners, see sig) instead of a decoded string list with its index map,
// and the writer's cache holds as many records as it holds user and item
// records. Handles are local to the process: Pebble and every reader see
// item ids, so results never depend on them.
//
// A batch writes only what it changed: a delta (version 2: the record's
// new mass and the pairs the batch touched, with their new values) as a
// Pebble merge operand, or the whole record (version 1) as a Set when the
// batch pruned it (a delta cannot remove pairs). The merge operator folds
// a base and its deltas in order (the newest value of each pair wins, new
// pairs are appended), so a read, a compaction or a reload sees the record
// the writer holds. Both versions have the same layout; readers decode
// either.

const neighborDeltaVersion = 2

// pairRecord is one item's neighbour record in the writer's form.
type pairRecord struct {
	LogMass float64
	P       []int32   // partner handles (Models.names)
	C       []float64 // log2 of the decayed co-occurrence (neighbor.LogC)
	M       []float64 // log2 of the partner's mass at the last update (neighbor.LogMass)
	ch      []bool    // pairs changed by the batch in flight
	// sig has bit sigBit(h) set for every partner h: find looks at the
	// slices only when it is set, and most lookups (the ranker's scores of
	// candidates against a history, mostly not each other's neighbours)
	// are for partners a record does not hold. With 1.5 × 100 pairs about
	// one absent partner in seven passes it.
	sig [16]uint64
	// dirty marks a record the batch changed; full, one it must write
	// whole (it was pruned, or read back from Pebble: see neighborRecord).
	dirty, full bool
}

// intern returns the handle of item id, creating it.
func (m *Models) intern(id string) int32 {
	if h, ok := m.handles[id]; ok {
		return h
	}
	h := int32(len(m.names))
	m.handles[id] = h
	m.names = append(m.names, id)
	return h
}

// handle returns the handle of item id, if it has one.
func (m *Models) handle(id string) (int32, bool) {
	h, ok := m.handles[id]
	return h, ok
}

// pairsFrom converts a committed neighbour record.
func (m *Models) pairsFrom(r *neighborRecord) *pairRecord {
	p := &pairRecord{LogMass: r.LogMass}
	n := len(r.List)
	p.P, p.C, p.M, p.ch = make([]int32, n), make([]float64, n), make([]float64, n), make([]bool, n)
	for i := range r.List {
		p.P[i], p.C[i], p.M[i] = m.intern(r.List[i].ID), r.List[i].LogC, r.List[i].LogMass
		p.mark(p.P[i])
	}
	return p
}

// readerRecord is r in the readers' form: the record a reader decodes
// from Pebble once r's batch is committed (the pairs in the same order),
// its index built.
func (m *Models) readerRecord(r *pairRecord) *neighborRecord {
	nr := &neighborRecord{LogMass: r.LogMass, List: make([]neighbor, len(r.P))}
	for i, h := range r.P {
		nr.List[i] = neighbor{ID: m.names[h], LogC: r.C[i], LogMass: r.M[i]}
	}
	nr.find("")
	return nr
}

// sigBit is partner h's bit in pairRecord.sig: a multiplicative hash, as
// handles are consecutive.
func sigBit(h int32) uint32 { return (uint32(h) * 0x9e3779b1) >> 22 }

func (r *pairRecord) mark(h int32) {
	b := sigBit(h)
	r.sig[b/64] |= 1 << (b % 64)
}

func (r *pairRecord) find(h int32) int {
	if b := sigBit(h); r.sig[b/64]&(1<<(b%64)) == 0 {
		return -1
	}
	for i, p := range r.P {
		if p == h {
			return i
		}
	}
	return -1
}

// sim is neighborRecord.sim for pair i.
func (r *pairRecord) sim(i int, fwd, shrinkage float64) float64 {
	return pairSim(r.LogMass, r.C[i], r.M[i], fwd, shrinkage)
}

// add adds weight 2^logW to r's pair with h (whose mass is 2^logMass),
// pruning back to keep pairs when r holds more than keep plus half as many
// again; names resolves handles for the prune's tie-break.
func (r *pairRecord) add(h int32, logW, logMass float64, keep int, names []string) {
	r.dirty = true
	if i := r.find(h); i >= 0 {
		r.C[i] = featurestore.LogAddExp2(r.C[i], logW)
		r.M[i] = logMass
		r.ch[i] = true
		return
	}
	r.P, r.C, r.M, r.ch = append(r.P, h), append(r.C, logW), append(r.M, logMass), append(r.ch, true)
	r.mark(h)
	if len(r.P) > keep+keep/2 {
		r.prune(keep, names)
	}
}

// prune keeps the keep strongest pairs, ordered as neighborRecord.prune
// orders them (strength, then id).
func (r *pairRecord) prune(keep int, names []string) {
	idx := make([]int, len(r.P))
	for i := range idx {
		idx[i] = i
	}
	strength := func(i int) float64 { return r.C[i] - r.M[i]/2 }
	slices.SortFunc(idx, func(a, b int) int {
		sa, sb := strength(a), strength(b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return strings.Compare(names[r.P[a]], names[r.P[b]])
	})
	idx = idx[:keep]
	p, c, m := make([]int32, keep), make([]float64, keep), make([]float64, keep)
	for j, i := range idx {
		p[j], c[j], m[j] = r.P[i], r.C[i], r.M[i]
	}
	r.P, r.C, r.M, r.ch = p, c, m, make([]bool, keep)
	r.sig = [16]uint64{}
	for _, h := range r.P {
		r.mark(h)
	}
	r.full = true
}

// appendTo encodes r whole (version 1) or, with delta, its mass and the
// pairs the batch changed (version 2).
func (r *pairRecord) appendTo(b []byte, names []string, delta bool) []byte {
	v := byte(modelVersion)
	if delta {
		v = neighborDeltaVersion
	}
	e := codec.Encoder{B: append(b, v)}
	e.F64(r.LogMass)
	n := len(r.P)
	if delta {
		n = 0
		for _, c := range r.ch {
			if c {
				n++
			}
		}
	}
	e.Uvarint(uint64(n))
	for i, h := range r.P {
		if delta && !r.ch[i] {
			continue
		}
		e.Str(names[h])
		e.F64(r.C[i])
		e.F64(r.M[i])
	}
	return e.B
}

// committed clears the batch's marks once its writes are committed.
func (r *pairRecord) committed() {
	clear(r.ch)
	r.dirty, r.full = false, false
}

// neighborMerger folds a neighbour record's operands: an optional base
// (version 1, only ever the oldest) and deltas (version 2). Pebble hands
// them newest or oldest first from the first one on; they are kept in the
// two lists they came in and put in order once, in Finish.
type neighborMerger struct {
	newer [][]byte // the first operand and newer ones, oldest first
	older [][]byte // older ones, newest first
}

func (m *neighborMerger) MergeNewer(value []byte) error {
	m.newer = append(m.newer, slices.Clone(value))
	return nil
}

func (m *neighborMerger) MergeOlder(value []byte) error {
	m.older = append(m.older, slices.Clone(value))
	return nil
}

func (m *neighborMerger) Finish(bool) ([]byte, io.Closer, error) {
	slices.Reverse(m.older)
	out, err := foldNeighbors(append(m.older, m.newer...))
	return out, nil, err
}

// foldScratch is foldNeighbors' index and pair list, recycled: flushes
// and compactions fold every neighbour record they meet.
type foldScratch struct {
	index map[string]int
	pairs []foldPair
}

// foldPair is a pair of an encoded neighbour record: its id and the 16
// bytes of its LogC and LogMass.
type foldPair struct{ id, vals []byte }

var foldScratches = sync.Pool{New: func() any { return &foldScratch{index: make(map[string]int, 256)} }}

// foldNeighbors folds encoded neighbour records, oldest first: the result
// is a whole record (version 1) when the oldest is one, else a delta. The
// newest value of each pair wins; new pairs are appended in the order they
// first appear.
//
// It works on the encoded pairs without decoding them: a pair is its id
// and its two float64s, copied as they are. The index's keys are strings
// over the operands' bytes (unsafe.String), which live until the fold
// returns and are not changed; the scratch is cleared before it is reused.
func foldNeighbors(ops [][]byte) ([]byte, error) {
	sc := foldScratches.Get().(*foldScratch)
	index, pairs := sc.index, sc.pairs
	defer func() {
		clear(index)
		clear(pairs) // drop the references to the operands
		sc.pairs = pairs[:0]
		foldScratches.Put(sc)
	}()
	var logMass []byte
	size := 1 + 8 + binary.MaxVarintLen64 // version, mass and count
	version := byte(neighborDeltaVersion)
	for k, op := range ops {
		if len(op) == 0 || (op[0] != modelVersion && op[0] != neighborDeltaVersion) {
			return nil, fmt.Errorf("models: neighbour operand: version: %w", featurestore.ErrCorrupt)
		}
		if op[0] == modelVersion {
			if k > 0 {
				return nil, fmt.Errorf("models: neighbour operand: a whole record newer than a delta: %w", featurestore.ErrCorrupt)
			}
			version = modelVersion
		}
		b := op[1:]
		if len(b) < 8 {
			return nil, fmt.Errorf("models: neighbour operand: mass: %w", featurestore.ErrCorrupt)
		}
		logMass, b = b[:8], b[8:]
		n, w := binary.Uvarint(b)
		if w <= 0 || n > 2000 {
			return nil, fmt.Errorf("models: neighbour operand: count: %w", featurestore.ErrCorrupt)
		}
		b = b[w:]
		for range n {
			l, w := binary.Uvarint(b)
			if w <= 0 || l > uint64(len(b)-w) || uint64(len(b)-w)-l < 16 {
				return nil, fmt.Errorf("models: neighbour operand: pair: %w", featurestore.ErrCorrupt)
			}
			id := b[w : w+int(l)]
			vals := b[w+int(l) : w+int(l)+16]
			b = b[w+int(l)+16:]
			key := unsafe.String(unsafe.SliceData(id), len(id))
			if i, ok := index[key]; ok {
				pairs[i].vals = vals
				continue
			}
			index[key] = len(pairs)
			pairs = append(pairs, foldPair{id, vals})
			size += w + len(id) + 16
		}
		if len(b) != 0 {
			return nil, fmt.Errorf("models: neighbour operand: %d bytes past its pairs: %w", len(b), featurestore.ErrCorrupt)
		}
	}
	out := make([]byte, 0, size)
	out = append(out, version)
	out = append(out, logMass...)
	out = binary.AppendUvarint(out, uint64(len(pairs)))
	for _, p := range pairs {
		out = binary.AppendUvarint(out, uint64(len(p.id)))
		out = append(out, p.id...)
		out = append(out, p.vals...)
	}
	return out, nil
}
