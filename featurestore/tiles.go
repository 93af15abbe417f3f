package featurestore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/axiomhq/hyperloglog"
	"github.com/cockroachdb/pebble/v2"
)

// Tiles are partial aggregates of one entity over a fixed span of event
// time. Two resolutions are kept for every entity: 1-hour tiles hold the
// behavior counts of its events in [start, start+1h); 5-minute tiles hold
// the events themselves, as (time offset, behavior) pairs, so that the
// newest edge of a window is exact to the millisecond. A window is read by
// combining the tiles it covers (see windowReader). Tiles are updated with
// Pebble merges (sums for counts, concatenation for event lists), and the
// updates of one apply batch are combined first, so a hot entity costs one
// merge per tile and batch and no read-modify-write.
const (
	fineTile   = int64(5 * 60 * 1000)  // 5 minutes
	coarseTile = int64(60 * 60 * 1000) // 1 hour
	dayMS      = int64(24 * 60 * 60 * 1000)

	resFine   byte = 'f'
	resCoarse byte = 'c'
	// resDistinct tiles are hourly HyperLogLog sketches of the other side
	// of an entity's events (a user's items, an item's users).
	resDistinct byte = 'x'

	kindUser byte = 'u'
	kindItem byte = 'i'
)

// tileSize returns the tile size used for a window of w milliseconds:
// 5 minutes under 12 hours, 1 hour otherwise.
func tileSize(w int64) int64 {
	if w < 12*coarseTile {
		return fineTile
	}
	return coarseTile
}

// Tiles cover event times in [0, tilesEnd): a tile key holds its day as a
// uint32, and ingest refuses events before 1971 and in the future, so no
// tile starts outside. Read times (an as_of, a spine's ts) may be any int64:
// readTime clamps them into [-readBound, readBound], where the arithmetic of
// windows and tiles cannot overflow, and the clamp changes no result: a
// window ending past readBound starts past tilesEnd (windows are far
// shorter than readBound-tilesEnd), one ending before -readBound ends
// before 0, and either way holds no tile, as it would unclamped.
const (
	tilesEnd  = int64(math.MaxUint32) * dayMS // the start of day 2^32-1, year 11761191
	readBound = int64(1) << 62
)

// readTime is ts clamped into [-readBound, readBound] (see tilesEnd).
func readTime(ts int64) int64 { return min(max(ts, -readBound), readBound) }

func floorTo(ts, g int64) int64 {
	if ts >= 0 {
		return ts - ts%g
	}
	return ts - (g+ts%g)%g
}

func dayOf(ts int64) uint32 { return uint32(floorTo(ts, dayMS) / dayMS) }

// bucketDays is how many days of tiles of a resolution share one key
// range: a window is read with one seek per bucket it touches, and expired
// tiles are removed a bucket at a time. 1-hour tiles (windows up to 12 d)
// use 4-day buckets, 5-minute tiles 1-day buckets.
func bucketDays(res byte) uint32 {
	if res == resFine {
		return 1
	}
	return 4
}

// bucketOf is the first day of the bucket of res holding ts.
func bucketOf(res byte, ts int64) uint32 {
	d := dayOf(ts)
	return d - d%bucketDays(res)
}

// tileKey: 't' bucket(4) res kind id 0x00 start(8), where bucket is the
// first day of the tile's bucket (see bucketDays). Bucket-major so that a
// whole expired bucket is one range delete.
func tileKey(res, kind byte, id string, start int64) []byte {
	return tileKeyIn(bucketOf(res, start), res, kind, id, start)
}

// tileKeyIn is tileKey in the part of the key space of the bucket starting
// at day; with start at the bucket's end it is an exclusive upper bound for
// the bucket's tiles.
func tileKeyIn(day uint32, res, kind byte, id string, start int64) []byte {
	return appendTileKey(make([]byte, 0, 1+4+2+len(id)+1+8), day, res, kind, id, start)
}

// appendTileKey appends tileKeyIn(day, res, kind, id, start) to k.
func appendTileKey(k []byte, day uint32, res, kind byte, id string, start int64) []byte {
	k = append(k, 't')
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, res, kind)
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(start))
}

// counts is the value of a tile: events per behavior.
type counts [numBehaviors]int64

func (c *counts) add(o *counts) {
	for i := range c {
		c[i] += o[i]
	}
}

// weighted is the behavior-weighted sum of c: the score of an hourly count
// in TopItems and the trending index alike.
func (c *counts) weighted(w *[numBehaviors]float64) float64 {
	score := 0.0
	for b, n := range c {
		score += w[b] * float64(n)
	}
	return score
}

func (c *counts) appendTo(b []byte) []byte {
	for _, n := range c {
		b = binary.AppendVarint(b, n)
	}
	return b
}

func (c *counts) decode(b []byte) error {
	for i := range c {
		v, n := binary.Varint(b)
		if n <= 0 {
			return ErrCorrupt
		}
		c[i] += v
		b = b[n:]
	}
	if len(b) != 0 {
		return ErrCorrupt
	}
	return nil
}

func oneCount(b Behavior) []byte {
	var c counts
	c[b] = 1
	return c.appendTo(make([]byte, 0, 8))
}

// newMerger returns the merge operator: it sums count vectors, joins event
// lists, unions sketches and unions seen records, keeping seenLimit items;
// the learner (if any) merges its own records (neighbour deltas).
// Its name is stored on disk by Pebble: a store created with another merger
// cannot be opened with this one. (The seen records came later under the
// same name: a store that has them cannot be read by an older binary.)
func newMerger(seenLimit int, learner Learner) *pebble.Merger {
	return &pebble.Merger{
		Name: "recsys.counts.v1",
		Merge: func(key, value []byte) (pebble.ValueMerger, error) {
			switch {
			case len(key) > 5 && key[0] == 't' && key[5] == resFine:
				return &concatMerger{buf: append([]byte(nil), value...)}, nil
			case len(key) > 5 && key[0] == 't' && key[5] == resDistinct:
				m := &sketchMerger{}
				return m, m.MergeNewer(value)
			case len(key) > 0 && key[0] == prefixSeen:
				m := &seenMerger{limit: seenLimit}
				return m, m.MergeNewer(value)
			case len(key) > 0 && (key[0] == 't' || key[0] == 'h'):
			default:
				if learner != nil {
					if m, err := learner.Merge(key, value); m != nil || err != nil {
						return m, err
					}
				}
				return nil, fmt.Errorf("featurestore: merge on key %q, which is not a tile", key)
			}
			m := &countMerger{}
			return m, m.MergeNewer(value)
		},
	}
}

// concatMerger joins event lists; their order does not matter.
type concatMerger struct{ buf []byte }

func (m *concatMerger) MergeNewer(value []byte) error { m.buf = append(m.buf, value...); return nil }
func (m *concatMerger) MergeOlder(value []byte) error { m.buf = append(m.buf, value...); return nil }
func (m *concatMerger) Finish(bool) ([]byte, io.Closer, error) {
	return m.buf, nil, nil
}

// appendEvent adds one event to a 5-minute tile's list: the offset of ts
// from the tile start (uvarint) and the behavior.
func appendEvent(b []byte, start, ts int64, beh Behavior) []byte {
	return append(binary.AppendUvarint(b, uint64(ts-start)), byte(beh))
}

type countMerger struct{ sum counts }

func (m *countMerger) MergeNewer(value []byte) error {
	var c counts
	if err := c.decode(value); err != nil {
		return err
	}
	m.sum.add(&c)
	return nil
}

func (m *countMerger) MergeOlder(value []byte) error { return m.MergeNewer(value) }

func (m *countMerger) Finish(bool) ([]byte, io.Closer, error) {
	return m.sum.appendTo(nil), nil, nil
}

// tile is one tile read back: counts of a 1-hour tile, or one event of a
// 5-minute tile (start = its time, one count).
type tile struct {
	start int64
	c     counts
}

// windowReader reads the tiles of entities for window features as of a
// time. It is reused across the entities of one request, which Get visits
// in id order: with one iterator per (bucket, resolution), every iterator
// seeks forward only, and Pebble turns short forward seeks into nexts.
type windowReader struct {
	src    pebble.Reader // the store's DB or a snapshot of it
	iters  map[iterKey]*bucketIter
	coarse []tile              // 1-hour tiles
	events []tile              // the events of the 5-minute tiles
	sk     *hyperloglog.Sketch // decoding buffer
	union  *hyperloglog.Sketch // distinct's dense union, reused
	lo, hi []byte              // key buffers of scanTiles
	// coarseSums and eventSums are the running sums of coarse and events
	// (see tileSums), made by the first sum after a load.
	coarseSums, eventSums tileSums
	// last is, per resolution (by its low bit), the iterator iter
	// returned last.
	last [2]struct {
		k  iterKey
		it *bucketIter
	}
}

type iterKey struct {
	day uint32
	res byte
}

// bucketIter is the iterator of one bucket and resolution, and where its
// last scan left it: at the first key at or past end (or exhausted).
// Reads in id order scan most buckets in key order, entity after entity:
// a scan that starts past end, at or before where the iterator is, needs
// no seek, and one a few keys further needs a few Nexts. (Pebble skips
// such seeks itself only after a seek, not after the Nexts of a scan.)
type bucketIter struct {
	it    *pebble.Iterator
	end   []byte
	valid bool // it is at a key, not exhausted
	at    bool // it is where the last scan left it
}

// seekGE positions b at the first key at or past k.
func (b *bucketIter) seekGE(k []byte) bool {
	if b.at && bytes.Compare(k, b.end) >= 0 {
		for range 8 {
			if !b.valid || bytes.Compare(b.it.Key(), k) >= 0 {
				return b.valid
			}
			b.valid = b.it.Next()
		}
	}
	b.valid = b.it.SeekGE(k)
	return b.valid
}

// newWindowReader returns a reader of the tiles in src: the store's DB, or
// a snapshot of it so that a whole response reads one state version.
func newWindowReader(src pebble.Reader) (*windowReader, error) {
	return &windowReader{src: src, iters: make(map[iterKey]*bucketIter), sk: newSketch()}, nil
}

// iter returns the iterator over the tiles of res in the bucket of day.
func (w *windowReader) iter(day uint32, res byte) (*bucketIter, error) {
	k := iterKey{day, res}
	// Most scans read the bucket the last scan of their resolution read.
	last := &w.last[res&1]
	if last.it != nil && last.k == k {
		return last.it, nil
	}
	if it, ok := w.iters[k]; ok {
		last.k, last.it = k, it
		return it, nil
	}
	lo := binary.BigEndian.AppendUint32([]byte{'t'}, day)
	it, err := w.src.NewIter(&pebble.IterOptions{LowerBound: append(lo, res), UpperBound: append(slices.Clip(lo), res+1)})
	if err != nil {
		return nil, err
	}
	b := &bucketIter{it: it}
	w.iters[k] = b
	last.k, last.it = k, b
	return b, nil
}

func (w *windowReader) close() error {
	var errs []error
	for _, b := range w.iters {
		errs = append(errs, b.it.Close())
	}
	return errors.Join(errs...)
}

// scanTiles calls fn with the start and value of every tile of res for
// (kind, id) with start in [lo, hi).
func (w *windowReader) scanTiles(res, kind byte, id string, lo, hi int64, fn func(start int64, v []byte) error) error {
	// No tile starts outside [0, tilesEnd): a window reaching back past
	// 1970 (an as_of near 0) reads from 0, one reaching past tilesEnd stops
	// there. So the day of every bound fits the uint32 of tile keys, and the
	// loop below visits at most one bucket per bucketDays of the window
	// (days are counted in int64: a uint32 day at the end of its range
	// would wrap around and the loop never end).
	lo, hi = max(lo, 0), min(hi, tilesEnd)
	if lo >= hi {
		return nil
	}
	n := int64(bucketDays(res))
	for day := int64(bucketOf(res, lo)); day <= int64(bucketOf(res, hi-1)); day += n {
		from := max(lo, day*dayMS)
		to := min(hi, (day+n)*dayMS)
		w.lo = appendTileKey(w.lo[:0], uint32(day), res, kind, id, from)
		w.hi = appendTileKey(w.hi[:0], uint32(day), res, kind, id, to)
		b, err := w.iter(uint32(day), res)
		if err != nil {
			return err
		}
		ok := b.seekGE(w.lo)
		b.at = false
		for ; ok && bytes.Compare(b.it.Key(), w.hi) < 0; ok = b.it.Next() {
			k := b.it.Key()
			v, err := b.it.ValueAndErr()
			if err != nil {
				return err
			}
			if err := fn(int64(binary.BigEndian.Uint64(k[len(k)-8:])), v); err != nil {
				return fmt.Errorf("tile %q: %w", k, err)
			}
		}
		if err := b.it.Error(); err != nil {
			return err
		}
		b.valid, b.at, b.end = ok, true, append(b.end[:0], w.hi...)
	}
	return nil
}

// windowSpec is a window length in ms.
type windowSpec = int64

// windowStart is the oldest event time a window of w ending at asOf
// counts: the exact window is (asOf-w, asOf]; its oldest edge is resolved
// to the start of the tile that holds its first millisecond. asOf may be
// any int64 (see readTime).
func windowStart(asOf, w int64) int64 { return floorTo(readTime(asOf)-w+1, tileSize(w)) }

// load reads what windows ws of (kind, id) as of asOf need:
// loadRange(kind, id, asOf, asOf, ws).
func (w *windowReader) load(kind byte, id string, asOf int64, ws []windowSpec) error {
	return w.loadRange(kind, id, asOf, asOf, ws)
}

// loadRange reads what windows ws of (kind, id) as of any time in [from,
// to] need: loadCoarse and loadFine.
func (w *windowReader) loadRange(kind byte, id string, from, to int64, ws []windowSpec) error {
	if err := w.loadCoarse(kind, id, from, to, ws); err != nil {
		return err
	}
	return w.loadFine(kind, id, from, to, ws)
}

// loadCoarse reads the 1-hour tiles that windows ws of (kind, id) as of
// any time in [from, to] need: from the oldest coarse window start (as of
// from) to the hour holding to, in time order.
func (w *windowReader) loadCoarse(kind byte, id string, from, to int64, ws []windowSpec) error {
	w.coarse = w.coarse[:0]
	w.coarseSums.valid = false
	from, to = readTime(from), readTime(to)
	lo := floorTo(from, coarseTile)
	for _, win := range ws {
		if tileSize(win) == coarseTile {
			lo = min(lo, windowStart(from, win))
		}
	}
	return w.scanTiles(resCoarse, kind, id, lo, floorTo(to, coarseTile), func(start int64, v []byte) error {
		t := tile{start: start}
		if err := t.c.decode(v); err != nil {
			return err
		}
		w.coarse = append(w.coarse, t)
		return nil
	})
}

// loadFine reads the events of the 5-minute tiles that windows ws of
// (kind, id) as of any time in [from, to] need: from the hour holding
// from (or the oldest fine window start) up to to, in time order. Events
// after to are left out, and sum leaves out those after its asOf, so the
// newest edge is exact.
func (w *windowReader) loadFine(kind byte, id string, from, to int64, ws []windowSpec) error {
	w.events = w.events[:0]
	w.eventSums.valid = false
	from, to = readTime(from), readTime(to)
	lo := floorTo(from, coarseTile)
	for _, win := range ws {
		if tileSize(win) != coarseTile {
			lo = min(lo, windowStart(from, win))
		}
	}
	err := w.scanTiles(resFine, kind, id, lo, floorTo(to, fineTile)+fineTile, func(start int64, v []byte) error {
		return eachEvent(start, v, func(ts int64, b Behavior) bool {
			if ts <= to {
				t := tile{start: ts}
				t.c[b] = 1
				w.events = append(w.events, t)
			}
			return true
		})
	})
	// Tiles come in time order (buckets and their keys are), the events
	// of one 5-minute tile in any.
	slices.SortFunc(w.events, func(a, b tile) int { return cmp.Compare(a.start, b.start) })
	return err
}

// eachEvent calls fn with the time and behavior of every event of the
// 5-minute tile starting at start whose value is v (merged event lists: a
// uvarint offset from start and a behavior byte each), until fn returns
// false.
func eachEvent(start int64, v []byte, fn func(ts int64, b Behavior) bool) error {
	for len(v) > 0 {
		off, n := binary.Uvarint(v)
		if n <= 0 || n >= len(v) || off >= uint64(fineTile) || v[n] >= byte(numBehaviors) {
			return ErrCorrupt
		}
		if !fn(start+int64(off), Behavior(v[n])) {
			return nil
		}
		v = v[n+1:]
	}
	return nil
}

// windowSum is a window's counts and, per behavior, the time of its newest
// contribution (a raw event's time, or a tile's start).
type windowSum struct {
	c      counts
	newest [numBehaviors]int64
}

func (ws *windowSum) add(t *tile) {
	ws.c.add(&t.c)
	for b, n := range t.c {
		if n > 0 {
			ws.newest[b] = max(ws.newest[b], t.start)
		}
	}
}

// sum returns the counts of the window win as of asOf from what load or
// loadRange read (asOf within its range): the 1-hour tiles from the
// window's start to the hour holding asOf, and the events from there (or
// the window's start) to asOf.
func (w *windowReader) sum(asOf int64, win windowSpec) windowSum {
	var ws windowSum
	asOf = readTime(asOf)
	lo := windowStart(asOf, win)
	hour := floorTo(asOf, coarseTile)
	fineFrom := lo
	if tileSize(win) == coarseTile {
		w.coarseSums.add(&ws, w.coarse, lo, hour-1)
		fineFrom = max(lo, hour)
	}
	w.eventSums.add(&ws, w.events, fineFrom, asOf)
	return ws
}

// tileSums are the running sums of a list of tiles in time order, so that
// a window's sum is two binary searches and a subtraction, not a pass over
// its tiles (a point-in-time join reads an entity's windows at each of
// its rows' times): cum[k] is the sum of the counts of tiles [0, k), and
// last[k][b] the index of the last tile of [0, k] that counts behavior b
// (-1: none), whose start is the newest contribution of b.
type tileSums struct {
	valid bool
	cum   []counts
	last  [][numBehaviors]int32
}

// add adds to ws the tiles of ts that start in [lo, hi], as adding each
// with windowSum.add would.
func (s *tileSums) add(ws *windowSum, ts []tile, lo, hi int64) {
	i, j := firstTileFrom(ts, lo), firstTileFrom(ts, hi+1)
	if j <= i {
		return
	}
	if j-i <= 2 { // as cheap as the sums
		for k := i; k < j; k++ {
			ws.add(&ts[k])
		}
		return
	}
	if !s.valid {
		s.build(ts)
	}
	for b := range ws.c {
		ws.c[b] += s.cum[j][b] - s.cum[i][b]
		if k := s.last[j-1][b]; int(k) >= i {
			ws.newest[b] = max(ws.newest[b], ts[k].start)
		}
	}
}

func (s *tileSums) build(ts []tile) {
	s.cum = append(s.cum[:0], counts{})
	s.last = s.last[:0]
	var c counts
	var last [numBehaviors]int32
	for b := range last {
		last[b] = -1
	}
	for k := range ts {
		c.add(&ts[k].c)
		for b, n := range ts[k].c {
			if n > 0 {
				last[b] = int32(k)
			}
		}
		s.cum = append(s.cum, c)
		s.last = append(s.last, last)
	}
	s.valid = true
}

// firstTileFrom is the index of the first tile of ts (in time order) that
// starts at or after t, len(ts) if none does. (A plain loop: a generic
// binary search with a comparison function was most of a point-in-time
// join's time in sums.)
func firstTileFrom(ts []tile, t int64) int {
	lo, hi := 0, len(ts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ts[m].start < t {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// TopItems returns the k items of category ("" for all) with the highest
// count in the window of w ms ending at asOf: by the weighted count when
// weighted, else by the count of behavior by. Both edges of the window are
// resolved to whole hours: the hours from the one holding asOf-w+1 to the
// one holding asOf.
func (s *Store) TopItems(category string, asOf, w int64, k int, weighted bool, by Behavior) ([]Scored, error) {
	return pinned(s, func(v *Version) ([]Scored, error) { return v.TopItems(category, asOf, w, k, weighted, by) })
}

// topItems is TopItems reading src (the DB or a snapshot of it).
func (s *Store) topItems(src pebble.Reader, category string, asOf, w int64, k int, weighted bool, by Behavior) ([]Scored, error) {
	iter, err := src.NewIter(&pebble.IterOptions{LowerBound: []byte{'h'}, UpperBound: []byte{'i'}})
	if err != nil {
		return nil, err
	}
	defer iter.Close()
	// Items in order of appearance with their running scores; the index
	// is looked up without allocating (only a new item's id is copied).
	var list []Scored
	index := make(map[string]int)
	// The hours from the one holding asOf-w+1 (or 1970, for a window
	// reaching back past it) to the one holding asOf; asOf and w may be any
	// int64 (see readTime). Empty hours are skipped by the seeks: the loop
	// runs once per hour that holds counts, not once per hour of the window.
	asOf = readTime(asOf)
	hour := int64(0)
	if w <= asOf {
		hour = floorTo(asOf-w+1, coarseTile)
	}
	for last := min(asOf, tilesEnd-1); hour <= last; {
		prefix := hourKey(category, hour, "")
		ok := iter.SeekGE(prefix)
		for ; ok && len(iter.Key()) >= len(prefix) && string(iter.Key()[:len(prefix)]) == string(prefix); ok = iter.Next() {
			v, err := iter.ValueAndErr()
			if err != nil {
				return nil, err
			}
			var c counts
			if err := c.decode(v); err != nil {
				return nil, fmt.Errorf("hourly count %q: %w", iter.Key(), err)
			}
			score := float64(c[by])
			if weighted {
				score = c.weighted(&s.weights)
			}
			id := iter.Key()[len(prefix):]
			if i, ok := index[string(id)]; ok {
				list[i].Score += score
			} else {
				index[string(id)] = len(list)
				list = append(list, Scored{ItemID: string(id), Score: score})
			}
		}
		if err := iter.Error(); err != nil {
			return nil, err
		}
		if !ok {
			break // no count of any later hour
		}
		// The iterator is at the first key past this hour's counts of
		// category: the next hour to read is the one of that key (the
		// next hour at least).
		hour += coarseTile
		if k := iter.Key(); len(k) >= hourKeyLen {
			hour = max(hour, hourOfKey(k))
		}
	}
	return TopScored(list, k), nil
}

// hllPrecision is the precision of distinct-count sketches: 2^10 registers,
// a standard error of about 3%, at most 1 KiB per entity and hour (sparse,
// and so smaller, while an hour has few distinct values).
const hllPrecision = 10

func newSketch() *hyperloglog.Sketch {
	sk, err := hyperloglog.NewSketch(hllPrecision, true)
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return sk
}

// sketchMerger unions HyperLogLog sketches.
type sketchMerger struct{ sk *hyperloglog.Sketch }

// decodeSketch decodes a stored sketch into sk.
func decodeSketch(sk *hyperloglog.Sketch, v []byte) error {
	if err := sk.UnmarshalBinary(v); err != nil {
		return fmt.Errorf("%w: sketch: %v", ErrCorrupt, err)
	}
	return nil
}

// startUnion empties w's dense union sketch (making it the first time). The union is dense
// (1 KiB of registers): merging a sparse sketch into it is a pass over the
// sparse entries, far cheaper than sparse merges. It is the reader's,
// reused from one distinct count to the next.
func (w *windowReader) startUnion() error {
	if w.union == nil {
		var err error
		w.union, err = hyperloglog.NewSketch(hllPrecision, false)
		return err
	}
	w.union.Reset()
	return nil
}

func (m *sketchMerger) MergeNewer(value []byte) error {
	sk := newSketch()
	if err := decodeSketch(sk, value); err != nil {
		return err
	}
	if m.sk == nil {
		m.sk = sk
		return nil
	}
	return m.sk.Merge(sk)
}

func (m *sketchMerger) MergeOlder(value []byte) error { return m.MergeNewer(value) }

func (m *sketchMerger) Finish(bool) ([]byte, io.Closer, error) {
	b, err := m.sk.MarshalBinary()
	return b, nil, err
}

// distinct estimates the distinct values in the hourly sketches of (kind,
// id) for the hours from the one holding asOf-w+1 to the one holding asOf.
func (w *windowReader) distinct(kind byte, id string, asOf, win int64) (int64, int64, error) {
	var newest int64
	merged := false
	asOf = readTime(asOf)
	err := w.scanTiles(resDistinct, kind, id, floorTo(asOf-win+1, coarseTile), floorTo(asOf, coarseTile)+coarseTile, func(start int64, v []byte) error {
		if err := decodeSketch(w.sk, v); err != nil {
			return err
		}
		newest = max(newest, start)
		if !merged {
			if err := w.startUnion(); err != nil {
				return err
			}
			merged = true
		}
		return w.union.Merge(w.sk)
	})
	if err != nil || !merged {
		return 0, 0, err
	}
	return int64(w.union.Estimate()), newest, nil
}
