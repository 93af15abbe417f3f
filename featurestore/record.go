package featurestore

import (
	"math"
	"slices"

	"github.com/streamrec/recsys/featurestore/internal/codec"
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
			list[i].Score = LogAddExp2(list[i].Score, logW)
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
	return PushRecent(list, id, ts, MaxRecent)
}

// PushRecent records id at ts in a newest-first list of distinct ids, at
// most capN long. An empty id is not recorded.
func PushRecent(list []Recent, id string, ts int64, capN int) []Recent {
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

// LogAddExp2 returns log2(2^a + 2^b) without overflow.
func LogAddExp2(a, b float64) float64 {
	if math.IsInf(a, -1) {
		return b
	}
	if math.IsInf(b, -1) {
		return a
	}
	hi, lo := max(a, b), min(a, b)
	return hi + math.Log2(1+math.Exp2(lo-hi))
}

func putCounters(e *codec.Encoder, c *Counters) {
	for _, n := range c.Count {
		e.Varint(n)
	}
	for _, t := range c.LastTS {
		e.Varint(t)
	}
	e.Varint(c.FirstTS)
	e.Varint(c.LastTSAny)
}

func putRecents(e *codec.Encoder, list []Recent) {
	e.Uvarint(uint64(len(list)))
	for _, r := range list {
		e.Str(r.ID)
		e.Varint(r.TS)
	}
}

func getCounters(d *codec.Decoder, c *Counters) {
	for i := range c.Count {
		c.Count[i] = d.Varint()
	}
	for i := range c.LastTS {
		c.LastTS[i] = d.Varint()
	}
	c.FirstTS = d.Varint()
	c.LastTSAny = d.Varint()
}

// decodeCounters reads the counters at the head of a user or item record
// b, leaving the rest unread.
func decodeCounters(b []byte, c *Counters) error {
	d := codec.Decoder{B: b}
	d.Version(recordVersion)
	getCounters(&d, c)
	if d.Err {
		return ErrCorrupt
	}
	return nil
}

func getRecents(d *codec.Decoder) []Recent {
	n := d.Uvarint()
	if n > MaxRecent {
		d.Fail()
		return nil
	}
	list := make([]Recent, 0, n)
	for range n {
		id := d.Str()
		list = append(list, Recent{ID: id, TS: d.Varint()})
	}
	return list
}

func (r *UserRecord) appendTo(b []byte) []byte {
	e := codec.Encoder{B: append(b, recordVersion)}
	putCounters(&e, &r.Counters)
	putRecents(&e, r.RecentItems)
	putRecents(&e, r.RecentCategories)
	e.Uvarint(uint64(len(r.Affinities)))
	for _, a := range r.Affinities {
		e.Str(a.ID)
		e.Varint(a.TS)
		e.F64(a.Score)
	}
	return e.B
}

func (r *UserRecord) decode(b []byte) error {
	d := codec.Decoder{B: b}
	d.Version(recordVersion)
	getCounters(&d, &r.Counters)
	r.RecentItems = getRecents(&d)
	r.RecentCategories = getRecents(&d)
	if n := d.Uvarint(); n <= MaxAffinities {
		r.Affinities = make([]Recent, 0, n)
		for range n {
			id := d.Str()
			ts := d.Varint()
			r.Affinities = append(r.Affinities, Recent{ID: id, TS: ts, Score: d.F64()})
		}
	} else {
		d.Fail()
	}
	return d.Done()
}

func (r *ItemRecord) appendTo(b []byte) []byte {
	e := codec.Encoder{B: append(b, recordVersion)}
	putCounters(&e, &r.Counters)
	e.Str(r.CategoryID)
	e.Varint(r.CategoryTS)
	e.F64(r.Pop)
	return e.B
}

func (r *ItemRecord) decode(b []byte) error {
	d := codec.Decoder{B: b}
	d.Version(recordVersion)
	getCounters(&d, &r.Counters)
	r.CategoryID = d.Str()
	r.CategoryTS = d.Varint()
	r.Pop = d.F64()
	return d.Done()
}
