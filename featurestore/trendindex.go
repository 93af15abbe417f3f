package featurestore

import (
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// The trending index: the items of all categories by their weighted count
// over the newest pair of hours, in memory, so that the trending list of a
// recommendation (TopItems of all items over the last hour, weighted) is a
// walk of its first k entries instead of a scan of every hourly count of
// two hours (tens of thousands of keys, each a stack of merge operands in
// the memtables: it cost more CPU than the rest of a recommendation).
//
// A window of one hour ending at asOf reads the hourly counts of the hour
// holding asOf−1h+1 and of the hour holding asOf (tiles.go, topItems): two
// hours, H−1 and H, except when asOf is the last millisecond of an hour.
// The writer keeps the "" hourly counts of every item for the hours from
// H−1 on (the same integers the hourly count keys sum to) and, for the
// pair (H−1, H), a B-tree of the items by score (the pair's weighted
// counts summed as topItems sums them, so the scores are the same floats),
// ties by id: the order topItems returns. H follows the read clock at each
// commit; when it moves, the tree is rebuilt from the hours kept (once an
// hour). Hours before H−1 are dropped.
//
// As with the popularity index, the writer changes its maps and tree only
// after a commit, and readers see a copy-on-write clone published with the
// version. A read whose window is not the published pair (a past as_of, a
// wall clock that entered a new hour before the next commit, the last
// millisecond of an hour) reads the hourly counts as before.

// trendLimit is how many of the pair's best items the tree holds. Scores
// only grow within a pair (counts are added, weights are not negative),
// so an item that scores below the tree's worst needs no place until an
// event lifts it: most events change no tree at all, and the clone a
// commit publishes copies few nodes. A TopItems of more than trendLimit
// items, while more items than that score, reads the hourly counts.
const trendLimit = 4096

// trendPub is what readers see of the index: the pair's newer hour and its
// tree. A nil tree: no pair (every read scans).
type trendPub struct {
	hour  int64
	tree  *popTree
	limit int
}

// trendIndex is the writer's side.
type trendIndex struct {
	weights [numBehaviors]float64
	limit   int                          // the most items tree holds
	from    int64                        // the index holds every count of the hours from this one on
	hours   map[int64]map[string]*counts // hour start → item → counts, hours from `from` on
	hour    int64                        // H, the pair's newer hour (valid with tree)
	tree    *popTree                     // the pair's limit best items by score; nil: no pair
	members map[string]float64           // the items in tree, with their scores
	touched bool                         // tree changed since the last publication
}

func newTrendIndex(weights [numBehaviors]float64, from int64, limit int) *trendIndex {
	return &trendIndex{weights: weights, limit: limit, from: from, hours: make(map[int64]map[string]*counts)}
}

// pairScore is item's score over the pair (H−1, H): as topItems sums it,
// the older hour's score first.
func (x *trendIndex) pairScore(item string) (float64, bool) {
	var total float64
	found := false
	for _, h := range [2]int64{x.hour - coarseTile, x.hour} {
		if c, ok := x.hours[h][item]; ok {
			if found {
				total += c.weighted(&x.weights)
			} else {
				total, found = c.weighted(&x.weights), true
			}
		}
	}
	return total, found
}

// count adds one event to the hour's counts (hours before from are not
// held) and reports whether the event's hour is in the pair.
func (x *trendIndex) count(ev *Event) bool {
	h := floorTo(ev.TS, coarseTile)
	if h < x.from {
		return false
	}
	m := x.hours[h]
	if m == nil {
		m = make(map[string]*counts)
		x.hours[h] = m
	}
	c := m[ev.ItemID]
	if c == nil {
		c = new(counts)
		m[ev.ItemID] = c
	}
	c[ev.Behavior]++
	return x.tree != nil && (h == x.hour-coarseTile || h == x.hour)
}

// add counts the applied events of a committed batch and updates the tree
// for their items.
func (x *trendIndex) add(applied []*Event) {
	var moved map[string]bool
	for _, ev := range applied {
		if x.count(ev) {
			if moved == nil {
				moved = make(map[string]bool)
			}
			moved[ev.ItemID] = true
		}
	}
	for item := range moved {
		if x.tree == nil {
			return // a rebuild found the pair unreadable
		}
		x.update(item)
	}
}

// update gives item its place among the pair's best after its score grew:
// moved up when it has one, in (and the worst out, when the tree is full)
// when it now beats the worst, nothing otherwise.
func (x *trendIndex) update(item string) {
	sc, ok := x.pairScore(item)
	e := popEntry{sc, item}
	if old, in := x.members[item]; in {
		switch {
		case sc == old:
			return
		case !(sc > old):
			// A score that fell (never, with weights that are not
			// negative): the tree may lack the next best. Rebuilt, exact.
			x.rebuild()
			return
		}
		x.tree.Delete(popEntry{old, item})
		x.tree.ReplaceOrInsert(e)
		x.members[item], x.touched = sc, true
		return
	}
	if !ok || !(sc > 0) {
		return // scores nothing: no read returns it
	}
	if x.tree.Len() >= x.limit {
		worst, _ := x.tree.Max()
		if !popLess(e, worst) {
			return
		}
		x.tree.Delete(worst)
		delete(x.members, worst.id)
	}
	x.tree.ReplaceOrInsert(e)
	x.members[item], x.touched = sc, true
}

// rebuild fills the tree with the pair's limit best items, from the hours'
// counts.
func (x *trendIndex) rebuild() {
	n := len(x.hours[x.hour-coarseTile]) + len(x.hours[x.hour])
	all := make([]popEntry, 0, n)
	done := make(map[string]bool, n)
	for _, h := range [2]int64{x.hour - coarseTile, x.hour} {
		for item := range x.hours[h] {
			if done[item] {
				continue
			}
			done[item] = true
			if sc, _ := x.pairScore(item); sc > 0 {
				all = append(all, popEntry{sc, item})
			}
		}
	}
	slices.SortFunc(all, func(a, b popEntry) int {
		if popLess(a, b) {
			return -1
		}
		return 1 // ids differ: no two entries are equal
	})
	all = all[:min(len(all), x.limit)]
	x.tree, x.members, x.touched = newPopTree(), make(map[string]float64, len(all)), true
	for _, e := range all {
		x.tree.ReplaceOrInsert(e)
		x.members[e.id] = e.pop
	}
}

// advance makes (hour−1h, hour) the pair, hour being the hour of the read
// clock at a commit: the hours before the pair are dropped, and the tree
// is rebuilt when the pair moves. A pair whose older hour the index no
// longer holds all of (a wall clock set back) leaves the index without a
// pair (every read scans) until the clock comes forward again.
func (x *trendIndex) advance(hour int64) {
	if x.tree != nil && hour == x.hour {
		return
	}
	if hour-coarseTile < x.from {
		x.dropPair()
		return
	}
	x.from, x.hour = hour-coarseTile, hour
	for h := range x.hours {
		if h < x.from {
			delete(x.hours, h)
		}
	}
	x.rebuild()
}

// dropBefore removes the hours before t, whose counts an expiry deleted.
func (x *trendIndex) dropBefore(t int64) {
	if t <= x.from {
		return
	}
	x.from = t
	for h := range x.hours {
		if h < t {
			delete(x.hours, h)
		}
	}
	if x.hour-coarseTile < t {
		x.dropPair()
	}
}

// dropPair leaves the index without a pair: every read scans.
func (x *trendIndex) dropPair() {
	if x.tree != nil {
		x.tree, x.members, x.touched = nil, nil, true
	}
}

// published returns the readers' view after a commit: old unless the tree
// changed. It runs under the publication lock.
func (x *trendIndex) published(old trendPub) trendPub {
	if !x.touched {
		return old
	}
	x.touched = false
	if x.tree == nil {
		return trendPub{}
	}
	return trendPub{hour: x.hour, tree: x.tree.Clone(), limit: x.limit}
}

// top returns the k best items of the pair with a positive score, best
// first, as topItems would: ok is false when a one-hour window ending at
// asOf is not the pair, or when k is more than the tree holds of more
// items that score (the caller reads the hourly counts).
func (p trendPub) top(asOf int64, k int) ([]Scored, bool) {
	if p.tree == nil {
		return nil, false
	}
	asOf = readTime(asOf)
	if coarseTile > asOf || asOf >= tilesEnd || floorTo(asOf, coarseTile) != p.hour || floorTo(asOf-coarseTile+1, coarseTile) != p.hour-coarseTile {
		return nil, false
	}
	if k > p.tree.Len() && p.tree.Len() >= p.limit {
		return nil, false
	}
	if k <= 0 {
		return nil, true
	}
	out := make([]Scored, 0, min(k, p.tree.Len()))
	p.tree.Ascend(func(e popEntry) bool {
		out = append(out, Scored{ItemID: e.id, Score: e.pop})
		return len(out) < k
	})
	return out, true
}

// loadTrendIndex builds the writer's index at Open from the hourly counts
// of all items of the hours from the one before the read clock's on.
func (s *Store) loadTrendIndex() error {
	now := s.clock(s.Stats().MaxTS)
	hour := floorTo(readTime(now), coarseTile)
	limit := trendLimit
	if s.opts.trendLimit > 0 {
		limit = s.opts.trendLimit
	}
	x := newTrendIndex(s.weights, hour-coarseTile, limit)
	lo := hourKey("", max(x.from, 0), "")
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: []byte{'i'}})
	if err != nil {
		return err
	}
	for iter.First(); iter.Valid(); iter.Next() {
		k := iter.Key()
		if len(k) <= hourKeyLen || k[hourKeyLen] != 0 {
			continue // a category's count: the index holds those of all items
		}
		var c counts
		if err := c.decode(iter.Value()); err != nil {
			_ = iter.Close()
			return fmt.Errorf("hourly count %q: %w", k, err)
		}
		h := hourOfKey(k)
		m := x.hours[h]
		if m == nil {
			m = make(map[string]*counts)
			x.hours[h] = m
		}
		m[string(k[hourKeyLen+1:])] = &c
	}
	if err := iter.Close(); err != nil {
		return err
	}
	x.advance(hour)
	s.trend = x
	s.pub.trend = x.published(trendPub{})
	return nil
}
