package featurestore

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/axiomhq/hyperloglog"
)

// Materialized windows: the online read path of window features.
//
// A window feature read from the tiles costs a seek per (bucket,
// resolution) and entity, a decode of every tile and a merge of up to 25
// hourly sketches. An online read (features:get at "now") instead looks up
// the entity's winEntry: its 1-hour tiles, its recent events and its
// hourly sketches, decoded in memory from a lower bound on, complete up to
// its newest event. Windows are summed from it exactly as from the tiles
// (the same edges, the same newest contributions), so both paths answer
// alike; TestWindowCacheMatchesTiles compares them batch after batch.
//
// Entries are built by readers on a miss, from the version they pinned,
// and kept up to date by the writer: after a batch commits, the entries
// of the entities it touched are copied with the batch's events folded in
// (and their oldest data, which no read at the store's clock needs any
// more, left out), and swapped in when the version is published, under
// the publication lock. A reader builds and looks up only while it holds
// a pinned version, so every entry it sees is as of that version (a
// publication waits for it). Expiry drops every entry.
//
// Memory is bounded by Options.WindowCacheBytes: entries are charged their
// decoded size, and a full cache drops about an eighth of its entries at
// random. An entity with more than maxEntryEvents recent events is read
// from the tiles instead.

// winKey names the window state of an entity.
type winKey struct {
	kind byte
	id   string
}

// hourCounts are an entity's 1-hour tiles of one behavior that count it:
// their starts, in time order, and the running total of their counts (so
// that a window's count is a difference and its newest contribution the
// last start in it).
type hourCounts struct {
	start, cum []int64
}

// total returns the count of the tiles before index i.
func (h *hourCounts) total(i int) int64 {
	if i == 0 {
		return 0
	}
	return h.cum[i-1]
}

// hourSketch is an entity's distinct-count sketch of one hour. It is never
// modified once in an entry: updates merge into a copy.
type hourSketch struct {
	start int64
	sk    *hyperloglog.Sketch
	size  int64 // approximate bytes
}

// winEntry is the window state of an entity as of a published version:
// every 1-hour tile starting at or after coarseLo, every event at or after
// fineLo, every hourly sketch at or after distLo, by behavior. A window's
// count is two binary searches per behavior. It is immutable.
type winEntry struct {
	coarseLo, fineLo, distLo int64
	coarse                   [numBehaviors]hourCounts
	events                   [numBehaviors][]int64 // event times, in order
	hours                    []hourSketch
	// rec is the entity's stored record as of the version, so that an
	// online read needs no Pebble read at all.
	rec  []byte
	size int64
	// last is the newest event time in events (math.MinInt64 if none): a
	// read as of last or later counts every event, so its sums depend on
	// the window's edges alone (see sum).
	last int64
	memo atomic.Pointer[distinctMemo]
	sums atomic.Pointer[[]sumMemo]
	dec  atomic.Pointer[decodedRec] // rec decoded, by the first reader
}

// decodedRec is an entry's record decoded (a user's or an item's).
type decodedRec struct {
	u  UserRecord
	it ItemRecord
}

// distinctMemo is the last distinct count read from an entry.
type distinctMemo struct{ lo, hi, n, newest int64 }

// sumMemo is a window's sum read from an entry as of a time at or past its
// newest event, with the edges it was read at: a read of the same window
// with the same edges, as of any time at or past the newest event, sums
// the same tiles and events. Online reads are at the store's clock, so
// all of them but the first in each 5 minutes of a window's edges read
// the memo: a lookup instead of four binary searches per behavior.
type sumMemo struct {
	w, lo, hour int64
	sum         windowSum
}

// maxSumMemos bounds the memos of an entry (the views' windows, in
// practice, are a handful).
const maxSumMemos = 8

// winBounds are the longest windows of one kind of entity in the store's
// views, by what they read: 1-hour tiles, events, sketches.
type winBounds struct{ coarse, fine, distinct int64 }

// lows returns the lower bounds an entry needs for reads as of t (or
// later) by windows up to b: the 1-hour tiles from the oldest coarse
// window start, the events from the hour holding t (the newest edge of
// coarse windows) or the oldest fine window start, the sketches from the
// hour holding t-w+1.
func (b winBounds) lows(t int64) (coarseLo, fineLo, distLo int64) {
	t = readTime(t)
	coarseLo, fineLo, distLo = t, floorTo(t, coarseTile), floorTo(t, coarseTile)
	if b.coarse > 0 {
		coarseLo = windowStart(t, b.coarse)
	}
	if b.fine > 0 {
		fineLo = min(fineLo, windowStart(t, b.fine))
	}
	if b.distinct > 0 {
		distLo = floorTo(t-b.distinct+1, coarseTile)
	}
	return coarseLo, fineLo, distLo
}

// maxEntryEvents bounds the events of an entry: an entity with more recent
// events is read from its tiles.
const maxEntryEvents = 1 << 16

// Approximate sizes, for the cache's budget.
const (
	entryOverhead = 160
	tileBytes     = 16 // per behavior counted
	eventBytes    = 8
	sketchBytes   = 64 // plus its encoded size
	memoBytes     = 24 + maxSumMemos*int64(unsafe.Sizeof(sumMemo{}))
	decodedBytes  = int64(unsafe.Sizeof(decodedRec{}))
)

// winCache holds the entries. Its mutex guards the map; the entries
// themselves are immutable.
type winCache struct {
	bounds map[byte]winBounds
	max    int64

	mu    sync.Mutex
	m     [2]map[string]*winEntry // users, items
	n     int                     // entries
	bytes int64
	// Counters for metrics and tests.
	hits, misses, builds, updates atomic.Int64
}

func newWinCache(defs *Definitions, maxBytes int64) *winCache {
	c := &winCache{bounds: make(map[byte]winBounds), max: maxBytes, m: [2]map[string]*winEntry{make(map[string]*winEntry), make(map[string]*winEntry)}}
	for _, v := range defs.Views {
		if v.kind != kindUser && v.kind != kindItem {
			continue
		}
		b := c.bounds[v.kind]
		for i := range v.Features {
			b = b.with(&v.Features[i])
		}
		c.bounds[v.kind] = b
	}
	return c
}

// with returns b widened to the windows feature f reads.
func (b winBounds) with(f *Feature) winBounds {
	if f.Agg == AggTopItems {
		return b
	}
	if f.Agg == AggDistinct {
		b.distinct = max(b.distinct, f.Window)
		return b
	}
	for _, w := range []int64{f.Window, f.Long} {
		switch {
		case w <= 0:
		case tileSize(w) == coarseTile:
			b.coarse = max(b.coarse, w)
		default:
			b.fine = max(b.fine, w)
		}
	}
	return b
}

// covers reports whether e answers reads as of t by windows up to b.
func (e *winEntry) covers(b winBounds, t int64) bool {
	c, f, d := b.lows(t)
	return c >= e.coarseLo && f >= e.fineLo && d >= e.distLo
}

// getRuns returns, for the i-th run of equal ids in order (rows sorted
// by id, see readRows), the entry of that entity of kind if it answers
// reads as of the time of the run's first row by windows up to b, or nil;
// all under one lock. Only a reader holding a pinned version may call it.
func (c *winCache) getRuns(kind byte, b winBounds, order []int, id func(r int) string, ts []int64) []*winEntry {
	var ents []*winEntry
	hits, misses := int64(0), int64(0)
	c.mu.Lock()
	m := c.kindMap(kind)
	for i := 0; i < len(order); {
		k := id(order[i])
		e := m[k]
		if e != nil && e.covers(b, ts[order[i]]) {
			hits++
		} else {
			e = nil
			misses++
		}
		ents = append(ents, e)
		for i++; i < len(order) && id(order[i]) == k; i++ {
		}
	}
	c.mu.Unlock()
	c.hits.Add(hits)
	c.misses.Add(misses)
	return ents
}

// put caches e for k. Only a reader holding a pinned version may call it,
// with an entry built from that version.
func (c *winCache) put(k winKey, e *winEntry) {
	if e.size > c.max/8 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set(k, e)
}

// kindMap returns the map of entities of kind.
func (c *winCache) kindMap(kind byte) map[string]*winEntry {
	if kind == kindUser {
		return c.m[0]
	}
	return c.m[1]
}

// lookup returns the entry of k or nil. c.mu is held.
func (c *winCache) lookup(k winKey) *winEntry { return c.kindMap(k.kind)[k.id] }

// set installs e for k (nil: drops k), evicting if the budget is exceeded.
// c.mu is held.
func (c *winCache) set(k winKey, e *winEntry) {
	m := c.kindMap(k.kind)
	if old, ok := m[k.id]; ok {
		c.bytes -= old.size
		c.n--
		delete(m, k.id)
	}
	if e == nil {
		return
	}
	for c.bytes+e.size > c.max && c.n > 0 {
		c.evict(max(1, c.n/8))
	}
	m[k.id] = e
	c.n++
	c.bytes += e.size
}

// evict drops about n entries, in the maps' random order. c.mu is held.
func (c *winCache) evict(n int) {
	for _, m := range c.m {
		for id, old := range m {
			if n == 0 {
				return
			}
			c.bytes -= old.size
			c.n--
			delete(m, id)
			n--
		}
	}
}

// clear drops every entry (expiry).
func (c *winCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m[0])
	clear(c.m[1])
	c.n, c.bytes = 0, 0
}

// stats returns the entries and their bytes.
func (c *winCache) stats() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.bytes
}

// build reads the window state of (kind, id) for reads as of from (or
// later) by windows up to b, from the tiles below hi (one past the
// entity's newest event time) in wr's version. It returns nil if the
// entity has too many recent events to keep.
func (c *winCache) build(wr *windowReader, kind byte, id string, rec []byte, b winBounds, from, hi int64) (*winEntry, error) {
	e := &winEntry{size: entryOverhead, rec: slices.Clone(rec)}
	e.coarseLo, e.fineLo, e.distLo = b.lows(from)
	if b.coarse > 0 {
		err := wr.scanTiles(resCoarse, kind, id, e.coarseLo, hi, func(start int64, v []byte) error {
			var c counts
			if err := c.decode(v); err != nil {
				return err
			}
			for b, n := range c {
				if n != 0 {
					h := &e.coarse[b]
					h.start = append(h.start, start)
					h.cum = append(h.cum, h.total(len(h.cum))+n)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	tooMany, nEvents := false, 0
	err := wr.scanTiles(resFine, kind, id, e.fineLo, hi, func(start int64, v []byte) error {
		return eachEvent(start, v, func(ts int64, b Behavior) bool {
			if nEvents == maxEntryEvents {
				tooMany = true
				return false
			}
			nEvents++
			e.events[b] = append(e.events[b], ts)
			return true
		})
	})
	if err != nil || tooMany {
		return nil, err
	}
	for _, ts := range e.events {
		slices.Sort(ts) // tiles come in time order, the events of one in any
	}
	if b.distinct > 0 {
		err := wr.scanTiles(resDistinct, kind, id, e.distLo, hi, func(start int64, v []byte) error {
			sk := newSketch()
			if err := decodeSketch(sk, v); err != nil {
				return err
			}
			e.hours = append(e.hours, hourSketch{start: start, sk: sk, size: sketchBytes + int64(len(v))})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	e.resize()
	c.builds.Add(1)
	return e, nil
}

// resize sets e's size and newest event time.
func (e *winEntry) resize() {
	e.size = entryOverhead + memoBytes + decodedBytes + 3*int64(len(e.rec)) // rec, and decoded
	e.last = math.MinInt64
	for b := range e.coarse {
		e.size += int64(cap(e.coarse[b].start))*tileBytes + int64(cap(e.events[b]))*eventBytes
		if ts := e.events[b]; len(ts) > 0 {
			e.last = max(e.last, ts[len(ts)-1])
		}
	}
	for _, h := range e.hours {
		e.size += h.size
	}
}

// numEvents returns the events of e.
func (e *winEntry) numEvents() int {
	n := 0
	for _, ts := range e.events {
		n += len(ts)
	}
	return n
}

// sum is windowReader.sum on the entry: the counts of window win as of
// asOf (covered by e), and per behavior the newest contribution (a
// tile's start, an event's time).
func (e *winEntry) sum(asOf int64, win windowSpec) windowSum {
	var ws windowSum
	asOf = readTime(asOf)
	lo := windowStart(asOf, win)
	fineFrom := lo
	coarse := tileSize(win) == coarseTile
	hour := floorTo(asOf, coarseTile)
	if coarse {
		fineFrom = max(lo, hour)
	}
	// As of the newest event or later, every event up to asOf is every
	// event: the sum is a function of (win, lo, hour).
	memoize := asOf >= e.last
	var memos []sumMemo
	if memoize {
		if p := e.sums.Load(); p != nil {
			memos = *p
			for i := range memos {
				if m := &memos[i]; m.w == win && m.lo == lo && m.hour == hour {
					return m.sum
				}
			}
		}
	}
	for b := range numBehaviors {
		if h := &e.coarse[b]; coarse && len(h.start) > 0 {
			i, _ := slices.BinarySearch(h.start, lo)
			j, _ := slices.BinarySearch(h.start, hour) // tiles in [lo, hour-1]
			if j > i {
				ws.c[b] += h.cum[j-1] - h.total(i)
				ws.newest[b] = h.start[j-1]
			}
		}
		if ts := e.events[b]; len(ts) > 0 {
			i, _ := slices.BinarySearch(ts, fineFrom)
			j, found := slices.BinarySearch(ts, asOf)
			for found && j < len(ts) && ts[j] == asOf {
				j++ // through every event at asOf
			}
			if j > i {
				ws.c[b] += int64(j - i)
				ws.newest[b] = max(ws.newest[b], ts[j-1])
			}
		}
	}
	if memoize {
		// A new slice (readers share the old one): this window's memo
		// replaces the one of its older edges.
		next := make([]sumMemo, 0, min(len(memos)+1, maxSumMemos))
		for _, m := range memos {
			if m.w != win && len(next) < maxSumMemos-1 {
				next = append(next, m)
			}
		}
		next = append(next, sumMemo{w: win, lo: lo, hour: hour, sum: ws})
		e.sums.Store(&next)
	}
	return ws
}

// distinct is windowReader.distinct on the entry, with w's union sketch.
func (e *winEntry) distinct(w *windowReader, asOf, win int64) (int64, int64, error) {
	asOf = readTime(asOf)
	lo, hi := floorTo(asOf-win+1, coarseTile), floorTo(asOf, coarseTile)
	if m := e.memo.Load(); m != nil && m.lo == lo && m.hi == hi {
		return m.n, m.newest, nil
	}
	var newest int64
	merged := false
	for _, h := range e.hours {
		if h.start < lo || h.start > hi {
			continue
		}
		if !merged {
			if err := w.startUnion(); err != nil {
				return 0, 0, err
			}
			merged = true
		}
		newest = max(newest, h.start)
		if err := w.union.Merge(h.sk); err != nil {
			return 0, 0, err
		}
	}
	var n int64
	if merged {
		n = int64(w.union.Estimate())
	}
	e.memo.Store(&distinctMemo{lo: lo, hi: hi, n: n, newest: newest})
	return n, newest, nil
}

// winUpdate is the writer's new entry of one entity, computed after its
// batch committed and installed when the batch's version is published.
type winUpdate struct {
	k        winKey
	old, new *winEntry // new nil: drop the entity's entry
}

// prepare computes the entries of the entities the batch touched that are
// cached: the old entry with the batch's events (applied, in order) folded
// in, and what no read as of now or later needs left out. tb holds the
// batch's hourly sketches, recOf encodes an entity's new record.
func (c *winCache) prepare(touched func(func(winKey)), applied []*Event, tb *tileBatch, now int64, recOf func(winKey) []byte) []winUpdate {
	var ups []winUpdate
	c.mu.Lock()
	if c.n > 0 {
		touched(func(k winKey) {
			if e := c.lookup(k); e != nil {
				ups = append(ups, winUpdate{k: k, old: e})
			}
		})
	}
	c.mu.Unlock()
	if len(ups) == 0 {
		return nil
	}
	evs := make(map[winKey][]*Event, len(ups))
	for _, u := range ups {
		evs[u.k] = nil
	}
	for _, ev := range applied {
		for _, k := range [...]winKey{{kindUser, ev.UserID}, {kindItem, ev.ItemID}} {
			if l, ok := evs[k]; ok {
				evs[k] = append(l, ev)
			}
		}
	}
	for i := range ups {
		u := &ups[i]
		u.new = u.old.with(c.bounds[u.k.kind], u.k, evs[u.k], tb, now)
		if u.new != nil {
			u.new.rec = recOf(u.k)
			u.new.resize()
		}
	}
	c.updates.Add(int64(len(ups)))
	return ups
}

// install swaps in the updates and drops the entries of every other
// touched entity (a reader may have cached one since prepare, as of the
// previous version). It runs under the publication lock.
func (c *winCache) install(touched func(func(winKey)), ups []winUpdate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		return // nothing to update or drop (an empty cache stays empty under the lock)
	}
	installed := make(map[winKey]bool, len(ups))
	for _, u := range ups {
		if c.lookup(u.k) == u.old && u.new != nil {
			c.set(u.k, u.new)
			installed[u.k] = true
		}
	}
	touched(func(k winKey) {
		if c.lookup(k) != nil && !installed[k] {
			c.set(k, nil)
		}
	})
}

// with returns a copy of e with the events evs of entity k folded in (tb
// holds the batch's sketches), whose lower bounds moved up to what reads
// as of now need when that is an hour or more past them. It returns nil
// when the entity has too many recent events to keep.
func (e *winEntry) with(b winBounds, k winKey, evs []*Event, tb *tileBatch, now int64) *winEntry {
	ne := &winEntry{coarseLo: e.coarseLo, fineLo: e.fineLo, distLo: e.distLo}
	if c, f, d := b.lows(now); c >= e.coarseLo+coarseTile && f >= e.fineLo+coarseTile && d >= e.distLo+coarseTile {
		ne.coarseLo, ne.fineLo, ne.distLo = c, f, d
	}
	// Per behavior: the new hours' counts and events, then the old ones
	// kept merged with them.
	var hourAdd [numBehaviors]map[int64]int64
	var evAdd [numBehaviors][]int64
	var skHours []int64
	for _, ev := range evs {
		hour := floorTo(ev.TS, coarseTile)
		if b.coarse > 0 && hour >= ne.coarseLo {
			if hourAdd[ev.Behavior] == nil {
				hourAdd[ev.Behavior] = make(map[int64]int64)
			}
			hourAdd[ev.Behavior][hour]++
		}
		if ev.TS >= ne.fineLo {
			evAdd[ev.Behavior] = append(evAdd[ev.Behavior], ev.TS)
		}
		if b.distinct > 0 && hour >= ne.distLo && !slices.Contains(skHours, hour) {
			skHours = append(skHours, hour)
		}
	}
	for bh := range numBehaviors {
		old := &e.coarse[bh]
		i, _ := slices.BinarySearch(old.start, ne.coarseLo)
		h := &ne.coarse[bh]
		if len(hourAdd[bh]) == 0 {
			h.start = old.start[i:] // shared: immutable, and the totals differ by a constant
			h.cum = old.cum[i:]
			if base := old.total(i); base != 0 {
				h.cum = make([]int64, len(old.cum)-i)
				for j := range h.cum {
					h.cum[j] = old.cum[i+j] - base
				}
			}
		} else {
			counts := make(map[int64]int64, len(old.start)-i+len(hourAdd[bh]))
			for j := i; j < len(old.start); j++ {
				counts[old.start[j]] = old.cum[j] - old.total(j)
			}
			for hour, n := range hourAdd[bh] {
				counts[hour] += n
			}
			h.start = slices.Sorted(func(yield func(int64) bool) {
				for hour := range counts {
					if !yield(hour) {
						return
					}
				}
			})
			h.cum = make([]int64, len(h.start))
			var run int64
			for j, hour := range h.start {
				run += counts[hour]
				h.cum[j] = run
			}
		}
		oldEv := e.events[bh]
		i, _ = slices.BinarySearch(oldEv, ne.fineLo)
		if len(evAdd[bh]) == 0 {
			ne.events[bh] = oldEv[i:] // shared: immutable
		} else {
			ts := make([]int64, 0, len(oldEv)-i+len(evAdd[bh]))
			ts = append(append(ts, oldEv[i:]...), evAdd[bh]...)
			slices.Sort(ts)
			ne.events[bh] = ts
		}
	}
	if ne.numEvents() > maxEntryEvents {
		return nil
	}
	for _, h := range e.hours {
		if h.start >= ne.distLo {
			ne.hours = append(ne.hours, h)
		}
	}
	for _, hour := range skHours {
		add := tb.sketches[string(tileKey(resDistinct, k.kind, k.id, hour))]
		if add == nil {
			continue // BUG guard: the batch has a sketch for every event's hour
		}
		j, found := slices.BinarySearchFunc(ne.hours, hour, func(h hourSketch, x int64) int { return cmp.Compare(h.start, x) })
		if !found {
			// The batch's own sketch: Pebble stores it as the tile's first
			// operand, and nothing modifies it after the batch.
			ne.hours = slices.Insert(ne.hours, j, hourSketch{start: hour, sk: add, size: sketchBytes + 4*int64(len(evs))})
			continue
		}
		// As Pebble's merge folds it: the stored value, then the batch's.
		sk := ne.hours[j].sk.Clone()
		if err := sk.Merge(add); err != nil {
			return nil
		}
		ne.hours[j] = hourSketch{start: hour, sk: sk, size: min(ne.hours[j].size+4*int64(len(evs)), sketchBytes+1<<hllPrecision+64)}
	}
	ne.resize()
	return ne
}

// WindowStateStats describe the materialized window state of online reads.
type WindowStateStats struct {
	Entries int   // entities held
	Bytes   int64 // their approximate memory
	// Since Open: reads answered from an entry, reads that found none
	// covering their time, entries built by readers, entries updated by
	// the writer.
	Hits, Misses, Builds, Updates int64
}

// WindowStateStats returns the materialized window state's size and
// counters (all zero when Options.WindowCacheBytes is negative).
func (s *Store) WindowStateStats() WindowStateStats {
	c := s.wins
	if c == nil {
		return WindowStateStats{}
	}
	n, b := c.stats()
	return WindowStateStats{Entries: n, Bytes: b, Hits: c.hits.Load(), Misses: c.misses.Load(), Builds: c.builds.Load(), Updates: c.updates.Load()}
}
