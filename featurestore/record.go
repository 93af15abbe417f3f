package featurestore

import (
	"encoding/binary"
	"math"
	"slices"
)

// MaxRecent is how many distinct recent items and categories a user keeps.
const MaxRecent = 20

const recordVersion = 2

// MaxAffinities is how many categories a user's affinity list keeps.
const MaxAffinities = 20

// Recent is an item or category with the event time it was last seen.
// In affinity lists Score is log2 of the forward-decayed, behavior-weighted
// event count (as for item popularity).
type Recent struct {
	ID    string
	TS    int64
	Score float64
}

// Counters are the lifetime aggregates kept for users and items alike.
type Counters struct {
	Count     [numBehaviors]int64 // events per behavior
	LastTS    [numBehaviors]int64 // newest event time per behavior, 0 if none
	FirstTS   int64               // oldest event time seen
	LastTSAny int64               // newest event time seen
}

func (c *Counters) add(b Behavior, ts int64) {
	c.Count[b]++
	c.LastTS[b] = max(c.LastTS[b], ts)
	if c.FirstTS == 0 || ts < c.FirstTS {
		c.FirstTS = ts
	}
	c.LastTSAny = max(c.LastTSAny, ts)
}

// UserRecord holds the features of one user.
type UserRecord struct {
	Counters
	RecentItems      []Recent // distinct, newest first, at most MaxRecent
	RecentCategories []Recent // distinct, newest first, at most MaxRecent
	Affinities       []Recent // categories by decayed affinity, at most MaxAffinities, unordered
}

// pushAffinity adds logW (log2 of weight * 2^(ts/halfLife)) to category
// cat, keeping the MaxAffinities best.
func pushAffinity(list []Recent, cat string, ts int64, logW float64) []Recent {
	if cat == "" {
		return list
	}
	for i := range list {
		if list[i].ID == cat {
			list[i].Score = logAddExp2(list[i].Score, logW)
			list[i].TS = max(list[i].TS, ts)
			return list
		}
	}
	list = append(list, Recent{ID: cat, TS: ts, Score: logW})
	if len(list) > MaxAffinities {
		low := 0
		for i := range list {
			if list[i].Score < list[low].Score {
				low = i
			}
		}
		list = append(list[:low], list[low+1:]...)
	}
	return list
}

// ItemRecord holds the features of one item.
type ItemRecord struct {
	Counters
	CategoryID string // category of the newest event that named one
	CategoryTS int64
	// Pop is log2 of the behavior-weighted count with forward exponential
	// decay: log2(sum of weight * 2^(ts/halfLife)). Comparable across items
	// at any read time; -Inf when the item has no events.
	Pop float64
}

// pushRecent records id at ts in a newest-first list of distinct ids, at
// most MaxRecent long.
func pushRecent(list []Recent, id string, ts int64) []Recent {
	return pushRecentN(list, id, ts, MaxRecent)
}

// pushRecentN records id at ts in a newest-first list of distinct ids, at
// most capN long. An empty id is not recorded.
func pushRecentN(list []Recent, id string, ts int64, capN int) []Recent {
	if id == "" {
		return list
	}
	for i, r := range list {
		if r.ID == id {
			if ts <= r.TS {
				return list
			}
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	pos := len(list)
	for i, r := range list {
		if ts >= r.TS {
			pos = i
			break
		}
	}
	if pos >= capN {
		return list
	}
	list = slices.Insert(list, pos, Recent{ID: id, TS: ts})
	if len(list) > capN {
		list = list[:capN]
	}
	return list
}

// logAddExp2 returns log2(2^a + 2^b) without overflow.
func logAddExp2(a, b float64) float64 {
	if math.IsInf(a, -1) {
		return b
	}
	if math.IsInf(b, -1) {
		return a
	}
	hi, lo := max(a, b), min(a, b)
	return hi + math.Log2(1+math.Exp2(lo-hi))
}

type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) f64(f float64)    { e.b = binary.LittleEndian.AppendUint64(e.b, math.Float64bits(f)) }

func (e *encoder) counters(c *Counters) {
	for _, n := range c.Count {
		e.varint(n)
	}
	for _, t := range c.LastTS {
		e.varint(t)
	}
	e.varint(c.FirstTS)
	e.varint(c.LastTSAny)
}

func (e *encoder) recents(list []Recent) {
	e.uvarint(uint64(len(list)))
	for _, r := range list {
		e.str(r.ID)
		e.varint(r.TS)
	}
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err, d.b = true, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err, d.b = true, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err, d.b = true, nil
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) f64() float64 {
	if len(d.b) < 8 {
		d.err, d.b = true, nil
		return 0
	}
	f := math.Float64frombits(binary.LittleEndian.Uint64(d.b))
	d.b = d.b[8:]
	return f
}

func (d *decoder) counters(c *Counters) {
	for i := range c.Count {
		c.Count[i] = d.varint()
	}
	for i := range c.LastTS {
		c.LastTS[i] = d.varint()
	}
	c.FirstTS = d.varint()
	c.LastTSAny = d.varint()
}

func (d *decoder) recents() []Recent {
	n := d.uvarint()
	if n > MaxRecent {
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

func (d *decoder) version() {
	if len(d.b) == 0 || d.b[0] != recordVersion {
		d.err, d.b = true, nil
		return
	}
	d.b = d.b[1:]
}

func (d *decoder) done() error {
	if d.err || len(d.b) != 0 {
		return ErrCorrupt
	}
	return nil
}

func (r *UserRecord) appendTo(b []byte) []byte {
	e := encoder{b: append(b, recordVersion)}
	e.counters(&r.Counters)
	e.recents(r.RecentItems)
	e.recents(r.RecentCategories)
	e.uvarint(uint64(len(r.Affinities)))
	for _, a := range r.Affinities {
		e.str(a.ID)
		e.varint(a.TS)
		e.f64(a.Score)
	}
	return e.b
}

func (r *UserRecord) decode(b []byte) error {
	d := decoder{b: b}
	d.version()
	d.counters(&r.Counters)
	r.RecentItems = d.recents()
	r.RecentCategories = d.recents()
	if n := d.uvarint(); n <= MaxAffinities {
		r.Affinities = make([]Recent, 0, n)
		for range n {
			id := d.str()
			ts := d.varint()
			r.Affinities = append(r.Affinities, Recent{ID: id, TS: ts, Score: d.f64()})
		}
	} else {
		d.err, d.b = true, nil
	}
	return d.done()
}

func (r *ItemRecord) appendTo(b []byte) []byte {
	e := encoder{b: append(b, recordVersion)}
	e.counters(&r.Counters)
	e.str(r.CategoryID)
	e.varint(r.CategoryTS)
	e.f64(r.Pop)
	return e.b
}

func (r *ItemRecord) decode(b []byte) error {
	d := decoder{b: b}
	d.version()
	d.counters(&r.Counters)
	r.CategoryID = d.str()
	r.CategoryTS = d.varint()
	r.Pop = d.f64()
	return d.done()
}
