package featurestore

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Tiles are partial aggregates of one entity over a fixed span of event
// time: the behavior counts of its events in [start, start+size). Two
// resolutions are kept for every entity, 5 minutes and 1 hour; a window is
// read by summing the tiles it covers (see windowCounts). Tiles are updated
// with Pebble merges, so a hot entity costs no read-modify-write.
const (
	fineTile   = int64(5 * 60 * 1000)  // 5 minutes
	coarseTile = int64(60 * 60 * 1000) // 1 hour
	dayMS      = int64(24 * 60 * 60 * 1000)

	resFine   byte = 'f'
	resCoarse byte = 'c'

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

func floorTo(ts, g int64) int64 {
	if ts >= 0 {
		return ts - ts%g
	}
	return ts - (g+ts%g)%g
}

func dayOf(ts int64) uint32 { return uint32(floorTo(ts, dayMS) / dayMS) }

// tileKey: 't' day(4) res kind id 0x00 start(8). Day-major so that a whole
// expired day is one range delete.
func tileKey(res, kind byte, id string, start int64) []byte {
	return tileKeyIn(dayOf(start), res, kind, id, start)
}

// tileKeyIn is tileKey in the given day's part of the key space; with start
// at the day's end it is an exclusive upper bound for the day's tiles.
func tileKeyIn(day uint32, res, kind byte, id string, start int64) []byte {
	k := make([]byte, 0, 1+4+2+len(id)+1+8)
	k = append(k, 't')
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, res, kind)
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(start))
}

// rawKey: 'r' day(4) kind id 0x00 ts(8) offset(8) -> behavior(1). Raw events
// make the newest edge of a window exact for reads as of a past time.
func rawKey(kind byte, id string, ts int64, off uint64) []byte {
	k := make([]byte, 0, 1+4+1+len(id)+1+16)
	k = append(k, 'r')
	k = binary.BigEndian.AppendUint32(k, dayOf(ts))
	k = append(k, kind)
	k = append(k, id...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, uint64(ts))
	return binary.BigEndian.AppendUint64(k, off)
}

// counts is the value of a tile: events per behavior.
type counts [numBehaviors]int64

func (c *counts) add(o *counts) {
	for i := range c {
		c[i] += o[i]
	}
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

// merger sums count vectors. Its name is stored on disk by Pebble: a store
// created with another merger cannot be opened with this one.
var merger = &pebble.Merger{
	Name: "recsys.counts.v1",
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		if len(key) == 0 || (key[0] != 't' && key[0] != 'h') {
			return nil, fmt.Errorf("featurestore: merge on key %q, which is not a counter", key)
		}
		m := &countMerger{}
		return m, m.MergeNewer(value)
	},
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

// tile is one tile read back.
type tile struct {
	start int64
	c     counts
}

// windowReader reads the tiles of entities for window features as of a
// time. It is reused across the entities of one request.
type windowReader struct {
	s      *Store
	iter   *pebble.Iterator
	coarse []tile
	fine   []tile
	raw    []tile // one per raw event (start = its ts)
}

func (s *Store) newWindowReader() (*windowReader, error) {
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'r'}, UpperBound: []byte{'u'}})
	if err != nil {
		return nil, err
	}
	return &windowReader{s: s, iter: iter}, nil
}

func (w *windowReader) close() error { return w.iter.Close() }

// scanTiles appends the tiles of res for (kind, id) with start in [lo, hi).
func (w *windowReader) scanTiles(dst []tile, res, kind byte, id string, lo, hi int64) ([]tile, error) {
	if lo >= hi {
		return dst, nil
	}
	for day := dayOf(lo); day <= dayOf(hi-1); day++ {
		from := max(lo, int64(day)*dayMS)
		to := min(hi, int64(day+1)*dayMS)
		start := tileKeyIn(day, res, kind, id, from)
		end := tileKeyIn(day, res, kind, id, to)
		for ok := w.iter.SeekGE(start); ok && string(w.iter.Key()) < string(end); ok = w.iter.Next() {
			k := w.iter.Key()
			v, err := w.iter.ValueAndErr()
			if err != nil {
				return dst, err
			}
			t := tile{start: int64(binary.BigEndian.Uint64(k[len(k)-8:]))}
			if err := t.c.decode(v); err != nil {
				return dst, fmt.Errorf("tile %q: %w", k, err)
			}
			dst = append(dst, t)
		}
		if err := w.iter.Error(); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// scanRaw appends one tile per raw event of (kind, id) with ts in [lo, hi].
func (w *windowReader) scanRaw(dst []tile, kind byte, id string, lo, hi int64) ([]tile, error) {
	for day := dayOf(lo); day <= dayOf(hi); day++ {
		start := rawKey(kind, id, max(lo, int64(day)*dayMS), 0)
		end := rawKey(kind, id, min(hi, int64(day+1)*dayMS-1), ^uint64(0))
		for ok := w.iter.SeekGE(start); ok && string(w.iter.Key()) <= string(end); ok = w.iter.Next() {
			k := w.iter.Key()
			v, err := w.iter.ValueAndErr()
			if err != nil {
				return dst, err
			}
			if len(v) < 1 || v[0] >= byte(numBehaviors) {
				return dst, fmt.Errorf("raw event %q: %w", k, ErrCorrupt)
			}
			t := tile{start: int64(binary.BigEndian.Uint64(k[len(k)-16:]))}
			t.c[v[0]] = 1
			dst = append(dst, t)
		}
		if err := w.iter.Error(); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// windowSpec is a window length in ms.
type windowSpec = int64

// windowStart is the oldest event time a window of w ending at asOf
// counts: the exact window is (asOf-w, asOf]; its oldest edge is resolved
// to the start of the tile that holds its first millisecond.
func windowStart(asOf, w int64) int64 { return floorTo(asOf-w+1, tileSize(w)) }

// load reads what windows ws of (kind, id) as of asOf need. lastTS is the
// entity's newest event time: when asOf is at or after it, the newest fine
// tile is complete as of asOf and is read whole instead of event by event.
func (w *windowReader) load(kind byte, id string, asOf, lastTS int64, ws []windowSpec) error {
	w.coarse, w.fine, w.raw = w.coarse[:0], w.fine[:0], w.raw[:0]
	hour := floorTo(asOf, coarseTile)
	newest := floorTo(asOf, fineTile)
	coarseLo, fineLo := hour, hour
	for _, win := range ws {
		lo := windowStart(asOf, win)
		if tileSize(win) == coarseTile {
			coarseLo = min(coarseLo, lo)
		} else {
			fineLo = min(fineLo, lo)
		}
	}
	var err error
	if w.coarse, err = w.scanTiles(w.coarse, resCoarse, kind, id, coarseLo, hour); err != nil {
		return err
	}
	fineHi := newest
	if asOf >= lastTS {
		fineHi = newest + fineTile
	}
	if w.fine, err = w.scanTiles(w.fine, resFine, kind, id, fineLo, fineHi); err != nil {
		return err
	}
	if asOf < lastTS {
		w.raw, err = w.scanRaw(w.raw, kind, id, newest, asOf)
	}
	return err
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

// sum returns the counts of the window win as of asOf from what load read.
func (w *windowReader) sum(asOf int64, win windowSpec) windowSum {
	var ws windowSum
	lo := windowStart(asOf, win)
	hour := floorTo(asOf, coarseTile)
	fineFrom := lo
	if tileSize(win) == coarseTile {
		for i := range w.coarse {
			if w.coarse[i].start >= lo {
				ws.add(&w.coarse[i])
			}
		}
		fineFrom = max(lo, hour)
	}
	for i := range w.fine {
		if w.fine[i].start >= fineFrom {
			ws.add(&w.fine[i])
		}
	}
	for i := range w.raw {
		ws.add(&w.raw[i])
	}
	return ws
}

// TopItems returns the k items of category ("" for all) with the highest
// count in the window of w ms ending at asOf: by the weighted count when
// weighted, else by the count of behavior by. Both edges of the window are
// resolved to whole hours: the hours from the one holding asOf-w+1 to the
// one holding asOf.
func (s *Store) TopItems(category string, asOf, w int64, k int, weighted bool, by Behavior) ([]Scored, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'h'}, UpperBound: []byte{'i'}})
	if err != nil {
		return nil, err
	}
	defer iter.Close()
	scores := make(map[string]float64)
	for hour := floorTo(asOf-w+1, coarseTile); hour <= asOf; hour += coarseTile {
		prefix := hourKey(category, hour, "")
		for ok := iter.SeekGE(prefix); ok && len(iter.Key()) >= len(prefix) && string(iter.Key()[:len(prefix)]) == string(prefix); ok = iter.Next() {
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
				score = 0
				for b, n := range c {
					score += s.weights[b] * float64(n)
				}
			}
			scores[string(iter.Key()[len(prefix):])] += score
		}
		if err := iter.Error(); err != nil {
			return nil, err
		}
	}
	out := make([]Scored, 0, len(scores))
	for id, sc := range scores {
		if sc > 0 {
			out = append(out, Scored{ItemID: id, Score: sc})
		}
	}
	slices.SortFunc(out, func(a, b Scored) int {
		if a.Score != b.Score {
			if a.Score > b.Score {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ItemID, b.ItemID)
	})
	if len(out) > k {
		out = out[:k]
	}
	return out, nil
}
