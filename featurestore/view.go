package featurestore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Kind is the type of a feature's value.
type Kind uint8

const (
	KindInt        Kind = iota // int64
	KindTimestamp              // Unix milliseconds
	KindString                 // string
	KindStringList             // list of strings
	KindFloat                  // float64
)

func (k Kind) String() string {
	switch k {
	case KindInt:
		return "int64"
	case KindTimestamp:
		return "timestamp_ms"
	case KindString:
		return "string"
	case KindStringList:
		return "list<string>"
	case KindFloat:
		return "float64"
	}
	return "unknown"
}

// Feature describes one feature of a view, as compiled from its definition.
type Feature struct {
	Name string
	Kind Kind
	Doc  string
	Agg  string // aggregation, one of the Agg constants

	Behavior      Behavior // count, rate numerator, top_items by
	Denominator   Behavior // rate
	Window        int64    // ms; 0 means lifetime. trend: the short window
	Long          int64    // trend: the long window, ms
	PriorMean     float64  // rate
	PriorStrength float64  // rate
	K             int      // top_categories, top_items
	Weighted      bool     // top_items by weighted count
	Entity        string   // the view's entity
}

// Versioned reports whether the feature can be read as of a past time.
func (f *Feature) Versioned() bool {
	switch f.Agg {
	case AggCount:
		return f.Window > 0
	case AggWeightedCount, AggRate, AggTrend, AggTopItems, AggDistinct:
		return true
	}
	return false
}

// Status says whether a Value holds a value.
type Status uint8

const (
	StatusNotFound     Status = iota // the entity has no events
	StatusPresent                    // the value is valid
	StatusExpired                    // the entity, or the data the value needs, is past the view's TTL
	StatusNotVersioned               // read as of a past time, and the feature keeps no history
)

func (s Status) String() string {
	return [...]string{"not_found", "present", "expired", "not_versioned"}[s]
}

// Value is one feature value of one entity.
type Value struct {
	Status  Status
	Int     int64    // KindInt, KindTimestamp
	Float   float64  // KindFloat
	Str     string   // KindString
	List    []string // KindStringList
	EventTS int64    // event time of the value's last update, Unix ms
}

// View is a named set of features of one entity type. Its rows are the
// entities; the id column is IDColumn.
type View struct {
	Name     string
	Entity   string // user, item or category
	IDColumn string
	TTL      time.Duration
	Features []Feature

	prefix []byte // record key prefix; nil for category views
	kind   byte   // tile kind
}

// Scannable reports whether the view's rows can be listed (category views
// are read by id only).
func (v *View) Scannable() bool { return v.prefix != nil }

var defaults = DefaultDefinitions()

// UserView and ItemView are the user and item views of the default
// definitions.
var (
	UserView = must(defaults.View("user_features"))
	ItemView = must(defaults.View("item_features"))
)

func must(v *View, err error) *View {
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return v
}

// Resolve maps feature names to indexes into v.Features; no names means all.
func (v *View) Resolve(names []string) ([]int, error) {
	if len(names) == 0 {
		idx := make([]int, len(v.Features))
		for i := range idx {
			idx[i] = i
		}
		return idx, nil
	}
	idx := make([]int, 0, len(names))
	for _, n := range names {
		i := slices.IndexFunc(v.Features, func(f Feature) bool { return f.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("%w %q in view %s", ErrUnknownFeature, n, v.Name)
		}
		idx = append(idx, i)
	}
	return idx, nil
}

// Row is one entity of a view with the requested feature values.
type Row struct {
	ID     string
	Found  bool
	Values []Value
}

// ReadTime says when a read happens: Now is the clock (for TTL and
// recency), AsOf the event time the values are computed at (== Now for an
// online read).
type ReadTime struct {
	Now  int64
	AsOf int64
}

// At returns the ReadTime of a read as of asOf (0: now) on the store's clock.
func (s *Store) At(asOf int64) ReadTime {
	now := s.Now()
	if asOf == 0 {
		asOf = now
	}
	return ReadTime{Now: now, AsOf: asOf}
}

// winSum is a window's sum for the current entity of a reader.
type winSum struct {
	w   int64
	sum windowSum
}

// reader computes feature values of one view for many entities.
type reader struct {
	s    *Store
	v    *View
	idx  []int
	rt   ReadTime
	wins []int64
	wr   *windowReader
	sums []winSum // per window, for the current entity
	u    UserRecord
	it   ItemRecord
	// countersOnly: no feature needs more of a record than its Counters,
	// so the rest is not decoded (nor checked).
	countersOnly bool
	// loaded: wr holds the tiles of the current entity for its rows'
	// times (see readRows), valuesOf does not read them again.
	loaded bool
	// bounds are the longest windows of the features read; ent, when not
	// nil, is the current entity's materialized window state, which
	// valuesOf reads instead of the tiles when it covers the read time.
	bounds winBounds
	ent    *winEntry
}

// preloadCoarse and preloadFine read the tiles of entity id that the
// window features need as of any time in [from, to], for valuesOf.
func (r *reader) preloadCoarse(id string, from, to int64) error {
	return r.wr.loadCoarse(r.v.kind, id, from, to, r.wins)
}

func (r *reader) preloadFine(id string, from, to int64) error {
	return r.wr.loadFine(r.v.kind, id, from, to, r.wins)
}

// The times of one entity whose tiles are read at once (see readRows):
// its 1-hour tiles of 60 days, the events of 12 hours (more than the
// longest fine window reads anyway).
const (
	coarseSpan = 60 * dayMS
	fineSpan   = 12 * coarseTile
)

// newReader returns a reader of the features idx of v in src (the DB or a
// snapshot of it).
func (s *Store) newReader(src pebble.Reader, v *View, idx []int, rt ReadTime) (*reader, error) {
	r := &reader{s: s, v: v, idx: idx, rt: rt, countersOnly: true}
	for _, i := range idx {
		f := &v.Features[i]
		r.bounds = r.bounds.with(f)
		switch f.Agg {
		case AggRecentItems, AggRecentCategories, AggTopCategories, AggCategoryID:
			r.countersOnly = false
		}
		if f.Agg == AggTopItems || f.Agg == AggDistinct {
			if f.Agg == AggDistinct && r.wr == nil {
				wr, err := newWindowReader(src)
				if err != nil {
					return nil, err
				}
				r.wr = wr
			}
			continue
		}
		for _, w := range []int64{f.Window, f.Long} {
			if w > 0 && !slices.Contains(r.wins, w) {
				r.wins = append(r.wins, w)
			}
		}
	}
	if len(r.wins) > 0 && r.wr == nil {
		wr, err := newWindowReader(src)
		if err != nil {
			return nil, err
		}
		r.wr = wr
	}
	return r, nil
}

func (r *reader) close() error {
	if r.wr != nil {
		return r.wr.close()
	}
	return nil
}

// values fills out for entity id whose stored record is rec.
func (r *reader) values(id string, rec []byte, out []Value) error {
	c, err := r.decode(rec)
	if err != nil {
		return err
	}
	return r.valuesOf(id, c, out)
}

// decode reads the stored record rec of an entity into r, and returns its
// counters.
func (r *reader) decode(rec []byte) (*Counters, error) {
	var c *Counters
	switch r.v.Entity {
	case "user":
		r.u = UserRecord{}
		c = &r.u.Counters
		if r.countersOnly {
			return c, decodeCounters(rec, c)
		}
		if err := r.u.decode(rec); err != nil {
			return nil, err
		}
	case "item":
		r.it = ItemRecord{}
		c = &r.it.Counters
		if r.countersOnly {
			return c, decodeCounters(rec, c)
		}
		if err := r.it.decode(rec); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// decodeEntry is decode of the record of the entity's materialized state
// e, decoded once for all the reads of e: an entry is immutable, and so is
// its record.
func (r *reader) decodeEntry(e *winEntry) (*Counters, error) {
	d := e.dec.Load()
	if d == nil {
		d = &decodedRec{}
		var err error
		switch r.v.Entity {
		case "user":
			err = d.u.decode(e.rec)
		case "item":
			err = d.it.decode(e.rec)
		}
		if err != nil {
			return nil, err
		}
		e.dec.Store(d)
	}
	switch r.v.Entity {
	case "user":
		r.u = d.u // shares the record's lists, which readers do not modify
		return &r.u.Counters, nil
	case "item":
		r.it = d.it
		return &r.it.Counters, nil
	}
	return nil, nil
}

// valuesOf fills out for entity id whose record r decoded, with counters
// c, as of r.rt.
func (r *reader) valuesOf(id string, c *Counters, out []Value) error {
	rt := r.rt
	if r.v.TTL > 0 && rt.Now-c.LastTSAny > r.v.TTL.Milliseconds() {
		for j := range out {
			out[j] = Value{Status: StatusExpired, EventTS: c.LastTSAny}
		}
		return nil
	}
	current := rt.AsOf >= c.LastTSAny // the record is the state as of AsOf
	r.sums = r.sums[:0]
	if r.ent != nil && !r.ent.covers(r.bounds, rt.AsOf) {
		r.ent = nil
	}
	if len(r.wins) > 0 && !r.loaded && r.ent == nil {
		if err := r.wr.load(r.v.kind, id, rt.AsOf, r.wins); err != nil {
			return err
		}
	}
	// Data is removed a whole day after it leaves the TTL, so a window
	// reaching back to Now-TTL-1d is still complete.
	retained := rt.Now - r.v.TTL.Milliseconds() - dayMS
	for j, i := range r.idx {
		f := &r.v.Features[i]
		if !f.Versioned() && !current {
			out[j] = Value{Status: StatusNotVersioned}
			continue
		}
		if f.Window > 0 && r.v.TTL > 0 && windowStart(rt.AsOf, max(f.Window, f.Long)) < retained {
			out[j] = Value{Status: StatusExpired}
			continue
		}
		if f.Agg == AggDistinct {
			var n, ts int64
			var err error
			if r.ent != nil {
				n, ts, err = r.ent.distinct(r.wr, rt.AsOf, f.Window)
			} else {
				n, ts, err = r.wr.distinct(r.v.kind, id, rt.AsOf, f.Window)
			}
			if err != nil {
				return err
			}
			out[j] = Value{Status: StatusPresent, Int: n, EventTS: ts}
			continue
		}
		out[j] = r.value(f, c, current)
	}
	return nil
}

func (r *reader) value(f *Feature, c *Counters, current bool) Value {
	asOf := r.rt.AsOf
	switch f.Agg {
	case AggCount:
		if f.Window == 0 {
			return Value{Status: StatusPresent, Int: c.Count[f.Behavior], EventTS: c.LastTS[f.Behavior]}
		}
		n, ts := r.sum(f.Window, f.Behavior)
		if current && n > 0 {
			ts = c.LastTS[f.Behavior]
		}
		return Value{Status: StatusPresent, Int: n, EventTS: ts}
	case AggWeightedCount:
		w, ts := r.weighted(f.Window)
		return Value{Status: StatusPresent, Float: w, EventTS: ts}
	case AggRate:
		num, ts1 := r.sum(f.Window, f.Behavior)
		den, ts2 := r.sum(f.Window, f.Denominator)
		rate := (float64(num) + f.PriorStrength*f.PriorMean) / (float64(den) + f.PriorStrength)
		return Value{Status: StatusPresent, Float: rate, EventTS: max(ts1, ts2)}
	case AggTrend:
		ws, ts := r.weighted(f.Window)
		wl, _ := r.weighted(f.Long)
		hs, hl := float64(f.Window)/float64(coarseTile), float64(f.Long)/float64(coarseTile)
		return Value{Status: StatusPresent, Float: (ws/hs + 1) / (wl/hl + 1), EventTS: ts}
	case AggFirstEventTS:
		return Value{Status: StatusPresent, Int: c.FirstTS, EventTS: c.FirstTS}
	case AggLastEventTS:
		return Value{Status: StatusPresent, Int: c.LastTSAny, EventTS: c.LastTSAny}
	case AggSecondsSinceLastEvent:
		// In floats: asOf may be any int64, and the difference overflow.
		return Value{Status: StatusPresent, Float: (float64(asOf) - float64(c.LastTSAny)) / 1000, EventTS: c.LastTSAny}
	case AggRecentItems:
		return recentValue(r.u.RecentItems, len(r.u.RecentItems))
	case AggRecentCategories:
		return recentValue(r.u.RecentCategories, len(r.u.RecentCategories))
	case AggTopCategories:
		return r.topCategories(f.K)
	case AggCategoryID:
		if r.it.CategoryID == "" {
			return Value{Status: StatusNotFound}
		}
		return Value{Status: StatusPresent, Str: r.it.CategoryID, EventTS: r.it.CategoryTS}
	}
	return Value{Status: StatusNotFound}
}

// sum returns the count of behavior b in window w and the time of its
// newest contribution.
func (r *reader) sum(w int64, b Behavior) (int64, int64) {
	var ws windowSum
	found := false
	for i := range r.sums {
		if r.sums[i].w == w {
			ws, found = r.sums[i].sum, true
			break
		}
	}
	if !found {
		if r.ent != nil {
			ws = r.ent.sum(r.rt.AsOf, w)
		} else {
			ws = r.wr.sum(r.rt.AsOf, w)
		}
		r.sums = append(r.sums, winSum{w, ws})
	}
	return ws.c[b], ws.newest[b]
}

// weighted returns the behavior-weighted count of window w and the time of
// its newest contribution.
func (r *reader) weighted(w int64) (float64, int64) {
	var total float64
	var newest int64
	for _, b := range Behaviors() {
		n, ts := r.sum(w, b)
		total += r.s.weights[b] * float64(n)
		newest = max(newest, ts)
	}
	return total, newest
}

func (r *reader) topCategories(k int) Value {
	aff := slices.Clone(r.u.Affinities)
	slices.SortFunc(aff, func(a, b Recent) int {
		if a.Score != b.Score {
			if a.Score > b.Score {
				return -1
			}
			return 1
		}
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	v := Value{Status: StatusPresent}
	for i := 0; i < len(aff) && i < k; i++ {
		v.List = append(v.List, aff[i].ID)
		v.EventTS = max(v.EventTS, aff[i].TS)
	}
	return v
}

func recentValue(list []Recent, n int) Value {
	v := Value{Status: StatusPresent, List: make([]string, 0, n)}
	for _, r := range list[:n] {
		v.List = append(v.List, r.ID)
		v.EventTS = max(v.EventTS, r.TS)
	}
	return v
}

// Get reads features idx of the entities ids at rt, one Row per id in order.
func (s *Store) Get(v *View, ids []string, idx []int, rt ReadTime) ([]Row, error) {
	if !v.Scannable() {
		if err := s.acquire(); err != nil {
			return nil, err
		}
		defer s.release()
		snap := s.db.NewSnapshot()
		defer snap.Close()
		rows := newRows(ids, len(idx))
		for r := range rows {
			if err := s.categoryValues(snap, v, &rows[r], idx, rt); err != nil {
				return nil, err
			}
		}
		return rows, nil
	}
	return s.getRows(v, ids, idx, rt.Now, func(int) int64 { return rt.AsOf }, true)
}

// GetEach reads features idx of entity ids[i] as of asOf[i] (the clock
// being now) for every i, one Row per id in order, sharing one reader.
// This is the point-in-time join: every row has its own time.
func (s *Store) GetEach(v *View, ids []string, idx []int, now int64, asOf []int64) ([]Row, error) {
	if len(asOf) != len(ids) {
		return nil, fmt.Errorf("get each: %d ids but %d times", len(ids), len(asOf))
	}
	if !v.Scannable() {
		return nil, fmt.Errorf("get each %s: %w", v.Name, errNotScannable)
	}
	return s.getRows(v, ids, idx, now, func(r int) int64 { return asOf[r] }, false)
}

// newRows returns one Row per id with room for n values each.
func newRows(ids []string, n int) []Row {
	rows := make([]Row, len(ids))
	vals := make([]Value, len(ids)*n)
	for r, id := range ids {
		rows[r] = Row{ID: id, Values: vals[r*n : (r+1)*n : (r+1)*n]}
	}
	return rows
}

// testHookRow, when set by a test, runs before each row getRows reads.
var testHookRow func()

// getRows reads the entities ids of a scannable view, row r as of
// asOf(r). It visits the rows in (id, time) order, so that the record and
// tile iterators only seek forward, and reads each entity's record once
// for all its rows, and its tiles once per distinct time; a big request is
// read in several runs of ids at once (see getWorkers). An online read
// (Get) of at most onlineRows ids pins the published version and reads
// window features from the materialized window state (winstate.go).
func (s *Store) getRows(v *View, ids []string, idx []int, now int64, asOf func(r int) int64, online bool) ([]Row, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	// One snapshot for the whole response: every row, record and tile is
	// read at one state version, even while batches are applied.
	var snap pebble.Reader
	var wc *winCache
	if online && s.wins != nil && len(ids) <= onlineRows {
		// Pinned: the materialized state is that of the published
		// version, which a publication cannot change while it is held.
		pv, err := s.Pin()
		if err != nil {
			return nil, err
		}
		defer pv.Release()
		snap, wc = pv.snap, s.wins
	} else {
		sn := s.db.NewSnapshot()
		defer sn.Close()
		snap = sn
	}
	rows := newRows(ids, len(idx))
	ts := make([]int64, len(rows))
	for r := range ts {
		ts[r] = asOf(r)
	}
	order := readOrder(ids, ts)
	parts := splitRuns(order, ids, getWorkers(len(order)))
	// A request for many of the view's entities (a join's slice, most
	// often) walks the records forward, a few Nexts from one to the next
	// instead of a seek; a sparse one looks each up with its bloom
	// filters.
	dense := int64(len(order)) >= s.Count(v)/8
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[p] = s.readRows(snap, v, idx, now, rows, ts, parts[p], wc, dense)
		}()
	}
	wg.Wait()
	return rows, errors.Join(errs...)
}

// readOrder returns the rows of ids in the order getRows reads them: by
// id, and by time ts within an id. Rows already in that order (a spine
// sorted by entity) are checked in one pass; others are grouped by id
// through a hash map, so that only the distinct ids are sorted by string
// comparison and each id's rows by time (a spine of many rows per entity
// sorts faster so than as rows).
func readOrder(ids []string, ts []int64) []int {
	order := make([]int, len(ids))
	for r := range order {
		order[r] = r
	}
	inOrder := func(a, b int) bool { return ids[a] < ids[b] || ids[a] == ids[b] && ts[a] <= ts[b] }
	sorted := true
	for r := 1; r < len(ids) && sorted; r++ {
		sorted = inOrder(r-1, r)
	}
	if sorted {
		return order
	}
	// Entities in order of appearance, and each row's entity.
	index := make(map[string]int32, min(len(ids), 1<<16))
	var uniq []string
	ent := make([]int32, len(ids))
	for r, id := range ids {
		e, ok := index[id]
		if !ok {
			e = int32(len(uniq))
			index[id] = e
			uniq = append(uniq, id)
		}
		ent[r] = e
	}
	// The distinct ids by their first 8 bytes as a number, then by the
	// whole string: most comparisons are of two integers in place.
	type sortKey struct {
		prefix uint64
		e      int32
	}
	keys := make([]sortKey, len(uniq))
	for e, id := range uniq {
		var b [8]byte
		copy(b[:], id)
		keys[e] = sortKey{binary.BigEndian.Uint64(b[:]), int32(e)}
	}
	slices.SortFunc(keys, func(a, b sortKey) int {
		if a.prefix != b.prefix {
			return cmp.Compare(a.prefix, b.prefix)
		}
		return strings.Compare(uniq[a.e], uniq[b.e])
	})
	byID := make([]int32, len(uniq))
	for i, k := range keys {
		byID[i] = k.e
	}
	// start[e] is where entity e's rows begin in order (a counting sort
	// by the entities' rank).
	start := make([]int, len(uniq)+1)
	for _, e := range ent {
		start[e+1]++
	}
	prev := 0
	for _, e := range byID {
		n := start[e+1]
		start[e+1] = prev // temporarily the entity's offset
		prev += n
	}
	for r, e := range ent {
		order[start[e+1]] = r
		start[e+1]++
	}
	// Each entity's rows, now consecutive in row order, by time.
	lo := 0
	for _, e := range byID {
		hi := start[e+1]
		if run := order[lo:hi]; len(run) > 1 {
			slices.SortStableFunc(run, func(a, b int) int { return cmp.Compare(ts[a], ts[b]) })
		}
		lo = hi
	}
	return order
}

// getWorkers is how many goroutines read n rows: one per 16 K rows, at
// most GOMAXPROCS.
func getWorkers(n int) int {
	return max(1, min(runtime.GOMAXPROCS(0), n/(16<<10)))
}

// splitRuns cuts order (rows sorted by id) into at most k parts of about
// equal length, never between two rows of one id.
func splitRuns(order []int, ids []string, k int) [][]int {
	var parts [][]int
	for len(order) > 0 {
		n := len(order) / k
		for n > 0 && n < len(order) && ids[order[n]] == ids[order[n-1]] {
			n++
		}
		if n == 0 || k == 1 {
			n = len(order)
		}
		parts = append(parts, order[:n])
		order, k = order[n:], k-1
	}
	return parts
}

// onlineRows is the most ids an online read (Get) reads through the
// materialized window state, holding a pinned version: a read of more
// (an export, in effect) scans the tiles without holding back
// publications.
const onlineRows = 16 << 10

// readRows fills rows[r] for every r of order (sorted by id and time), row
// r as of ts[r], from snap through one reader; with wc, window features
// come from the materialized window state (snap is then the pinned
// version's).
func (s *Store) readRows(snap pebble.Reader, v *View, idx []int, now int64, rows []Row, ts []int64, order []int, wc *winCache, dense bool) error {
	rd, err := s.newReader(snap, v, idx, ReadTime{Now: now})
	if err != nil {
		return err
	}
	defer rd.close()
	// The records' iterator, opened at the first entity not read from the
	// materialized window state.
	var it *pebble.Iterator
	defer func() {
		if it != nil {
			_ = it.Close()
		}
	}()
	var at []byte // dense: the iterator is at the first key >= at
	key := slices.Clone(v.prefix)
	// The entities' materialized state, looked up at once.
	var ents []*winEntry
	if wc != nil {
		ents = wc.getRuns(v.kind, rd.bounds, order, func(r int) string { return rows[r].ID }, ts)
	}
	for i, run := 0, 0; i < len(order); run++ {
		id := rows[order[i]].ID
		j := i + 1
		for j < len(order) && rows[order[j]].ID == id {
			j++
		}
		var c *Counters
		var rec []byte
		rd.ent = nil
		if wc != nil {
			// The entity's materialized state holds its record: no seek.
			if e := ents[run]; e != nil {
				var err error
				if c, err = rd.decodeEntry(e); err != nil {
					return fmt.Errorf("get %s %q: %w", v.Name, id, err)
				}
				rd.ent = e
			}
		}
		if rd.ent == nil {
			if it == nil {
				var err error
				if it, err = snap.NewIter(&pebble.IterOptions{LowerBound: v.prefix, UpperBound: prefixEnd(v.prefix)}); err != nil {
					return err
				}
			}
			key = append(key[:len(v.prefix)], id...)
			var ok bool
			if dense {
				ok = seekForward(it, at, key)
				at = append(at[:0], key...)
			} else {
				ok = it.SeekPrefixGE(key)
			}
			if ok && bytes.Equal(it.Key(), key) {
				b, err := it.ValueAndErr()
				if err == nil {
					c, err = rd.decode(b)
					rec = b
				}
				if err != nil {
					return fmt.Errorf("get %s %q: %w", v.Name, id, err)
				}
			} else if err := it.Error(); err != nil {
				return fmt.Errorf("get %s %q: %w", v.Name, id, err)
			}
		}
		prev, coarseUntil, fineUntil := -1, int64(0), int64(0)
		rd.loaded = c != nil && len(rd.wins) > 0
		if wc != nil && c != nil {
			if rd.ent == nil {
				e, err := s.windowState(wc, rd, id, rec, c, now, ts[order[i]])
				if err != nil {
					return fmt.Errorf("get %s %q: %w", v.Name, id, err)
				}
				rd.ent = e
			}
			rd.loaded = false // valuesOf reads the tiles if rd.ent does not cover a row
		}
		// within is the time of the last row from k on within span of row
		// k's, and the time past which a row is not (rows come in time
		// order).
		within := func(k int, span int64) (last, until int64) {
			until = readTime(ts[order[i+k]]) + span
			for _, q := range order[i+k : j] {
				if ts[q] > until {
					break
				}
				last = ts[q]
			}
			return last, until
		}
		for k, r := range order[i:j] {
			if testHookRow != nil {
				testHookRow()
			}
			if c == nil {
				continue
			}
			// The tiles of the entity are read once for its rows within
			// a span of each other.
			if rd.loaded && (k == 0 || ts[r] > coarseUntil) {
				last, until := within(k, coarseSpan)
				if err := rd.preloadCoarse(id, ts[r], last); err != nil {
					return fmt.Errorf("get %s %q: %w", v.Name, id, err)
				}
				coarseUntil = until
			}
			if rd.loaded && (k == 0 || ts[r] > fineUntil) {
				last, until := within(k, fineSpan)
				if err := rd.preloadFine(id, ts[r], last); err != nil {
					return fmt.Errorf("get %s %q: %w", v.Name, id, err)
				}
				fineUntil = until
			}
			row := &rows[r]
			row.Found = true
			if prev >= 0 && ts[r] == ts[prev] { // the same entity and time: the same values
				copy(row.Values, rows[prev].Values)
				continue
			}
			rd.rt = ReadTime{Now: now, AsOf: ts[r]}
			if err := rd.valuesOf(id, c, row.Values); err != nil {
				return fmt.Errorf("get %s %q: %w", v.Name, id, err)
			}
			prev = r
		}
		i = j
	}
	return nil
}

// windowState builds the materialized window state of entity id (stored
// record rec, its counters c) for reads as of t by rd, from rd's version,
// after a lookup missed, and caches it; nil when the read needs no window, the entity has expired, t is not
// recent (an as_of more than an hour before now: read from the tiles) or
// the entity has too many recent events to keep.
func (s *Store) windowState(wc *winCache, rd *reader, id string, rec []byte, c *Counters, now, t int64) (*winEntry, error) {
	if rd.wr == nil || (rd.v.TTL > 0 && now-c.LastTSAny > rd.v.TTL.Milliseconds()) {
		return nil, nil
	}
	k := winKey{rd.v.kind, id}
	if t = readTime(t); t < now-coarseTile {
		return nil, nil
	}
	b := wc.bounds[rd.v.kind]
	b = winBounds{max(b.coarse, rd.bounds.coarse), max(b.fine, rd.bounds.fine), max(b.distinct, rd.bounds.distinct)}
	e, err := wc.build(rd.wr, rd.v.kind, id, rec, b, min(t, now), c.LastTSAny+1)
	if err != nil || e == nil {
		return nil, err
	}
	wc.put(k, e)
	return e, nil
}

// seekForward positions it at the first key at or past k, knowing that it
// is at the first key at or past at (nil: anywhere): when k is past at,
// with a few Nexts if they reach it.
func seekForward(it *pebble.Iterator, at, k []byte) bool {
	if at != nil && bytes.Compare(k, at) > 0 {
		valid := it.Valid()
		for range 16 {
			if !valid || bytes.Compare(it.Key(), k) >= 0 {
				return valid
			}
			valid = it.Next()
		}
	}
	return it.SeekGE(k)
}

// categoryValues fills the top_items features of one category row.
func (s *Store) categoryValues(src pebble.Reader, v *View, row *Row, idx []int, rt ReadTime) error {
	for j, i := range idx {
		f := &v.Features[i]
		if v.TTL > 0 && windowStart(rt.AsOf, f.Window) < rt.Now-v.TTL.Milliseconds()-dayMS {
			row.Values[j] = Value{Status: StatusExpired}
			continue
		}
		top, err := s.topItems(src, row.ID, rt.AsOf, f.Window, f.K, f.Weighted, f.Behavior)
		if err != nil {
			return err
		}
		val := Value{Status: StatusPresent, List: make([]string, len(top))}
		for t, it := range top {
			val.List[t] = it.ItemID
		}
		val.EventTS = floorTo(readTime(rt.AsOf), coarseTile)
		row.Values[j] = val
		row.Found = row.Found || len(top) > 0
	}
	if !row.Found {
		for j := range row.Values {
			if row.Values[j].Status == StatusPresent {
				row.Values[j] = Value{Status: StatusNotFound}
			}
		}
	}
	return nil
}

// Scan calls fn for every entity of v with id in [lo, hi) in id order, its
// features read at rt; an empty hi means no upper bound. The Row passed to
// fn is reused between calls. Scan stops at the first error fn returns.
func (s *Store) Scan(v *View, lo, hi string, idx []int, rt ReadTime, fn func(*Row) error) error {
	if !v.Scannable() {
		return fmt.Errorf("scan %s: %w", v.Name, errNotScannable)
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	// One snapshot for the whole scan (see getRows).
	snap := s.db.NewSnapshot()
	defer snap.Close()
	return s.scanIn(snap, v, lo, hi, idx, rt, fn)
}

// scanIn is Scan in snap.
func (s *Store) scanIn(snap *pebble.Snapshot, v *View, lo, hi string, idx []int, rt ReadTime, fn func(*Row) error) error {
	if !v.Scannable() {
		return fmt.Errorf("scan %s: %w", v.Name, errNotScannable)
	}
	opts := &pebble.IterOptions{LowerBound: makeKey(v.prefix, lo), UpperBound: prefixEnd(v.prefix)}
	if hi != "" {
		opts.UpperBound = makeKey(v.prefix, hi)
	}
	iter, err := snap.NewIter(opts)
	if err != nil {
		return err
	}
	defer iter.Close()
	rd, err := s.newReader(snap, v, idx, rt)
	if err != nil {
		return err
	}
	defer rd.close()
	row := Row{Found: true, Values: make([]Value, len(idx))}
	for iter.First(); iter.Valid(); iter.Next() {
		row.ID = string(iter.Key()[len(v.prefix):])
		val, err := iter.ValueAndErr()
		if err != nil {
			return err
		}
		if err := rd.values(row.ID, val, row.Values); err != nil {
			return fmt.Errorf("scan %s %q: %w", v.Name, row.ID, err)
		}
		if err := fn(&row); err != nil {
			return err
		}
	}
	return iter.Error()
}

var errNotScannable = errors.New("featurestore: view is read by id only")

// Count returns the number of entities in v (-1 when unknown).
func (s *Store) Count(v *View) int64 { return countIn(v, s.Stats()) }

// countIn is the number of entities of v by the counters st.
func countIn(v *View, st Stats) int64 {
	switch v.Entity {
	case "user":
		return st.Users
	case "item":
		return st.Items
	}
	return -1
}

// SplitIDs returns up to k-1 ids that split the entities of v into k runs
// of about equal size, in id order (fewer when v has fewer entities).
func (s *Store) SplitIDs(v *View, k int) ([]string, error) {
	if !v.Scannable() || k <= 1 {
		return nil, nil
	}
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	return s.splitIDs(s.db, v, s.Stats(), k)
}

// splitIDs is SplitIDs in src, whose counters are st.
func (s *Store) splitIDs(src pebble.Reader, v *View, st Stats, k int) ([]string, error) {
	if !v.Scannable() || k <= 1 {
		return nil, nil
	}
	step := countIn(v, st) / int64(k)
	if step <= 0 {
		return nil, nil
	}
	iter, err := src.NewIter(&pebble.IterOptions{LowerBound: v.prefix, UpperBound: prefixEnd(v.prefix)})
	if err != nil {
		return nil, err
	}
	defer iter.Close()
	var splits []string
	var i int64
	for iter.First(); iter.Valid() && len(splits) < k-1; iter.Next() {
		if i > 0 && i%step == 0 {
			splits = append(splits, string(iter.Key()[len(v.prefix):]))
		}
		i++
	}
	return splits, iter.Error()
}
