package featurestore

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// A state version is what one commit (an apply batch, an expiry) leaves:
// the records in Pebble and the in-memory state published with them (the
// read caches, the learner's tables and weights). A commit writes its
// Pebble batch first, then takes a snapshot of the DB and publishes it
// together with its in-memory side under the write lock of Store.pub;
// readers that must see one version (a recommendation reads dozens of
// records, the factor table and the ranker) pin it under the read lock.
// The lock is held by the writer only for the publication (cache
// invalidations and table updates, microseconds to a millisecond), not
// for the Pebble commit; a pinned reader delays the next publication by
// at most its own duration.
//
// Every cached read (Item, the learner's neighbour records) happens at
// the published version: pinned readers read it, and Apply reads before
// its own commit, when the DB and the published snapshot agree. So the
// read caches only ever hold published values.

// Reader reads committed state: the Store (the newest published version
// at each call) and a Version (one version for all its calls).
type Reader interface {
	// ReadKey returns a copy of the committed value of key.
	ReadKey(key []byte) ([]byte, bool, error)
	// Now is the read clock (see Store.Now).
	Now() int64
}

// Version is one published state version, pinned: everything read
// through it is as of the same commit. Release it promptly (a pinned
// version holds back the next publication), and never pin another
// version or call the Store's own read methods while holding one: the
// read lock is not reentrant once a writer waits.
type Version struct {
	s     *Store
	snap  *pebble.Snapshot
	stats Stats
	now   int64
	seq   uint64
}

// Pin pins the newest published version. Every Pin must be paired with
// Release.
func (s *Store) Pin() (*Version, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	s.pub.RLock()
	v := &Version{s: s, snap: s.pub.snap, stats: s.Stats(), seq: s.pub.seq}
	v.now = s.clock(v.stats.MaxTS)
	return v, nil
}

// Release unpins the version; it must not be used afterwards.
func (v *Version) Release() {
	v.s.pub.RUnlock()
	v.s.release()
}

// publish makes snap (taken right after a commit) the published version,
// running fn (which publishes the commit's in-memory side) under the same
// lock, and closes the previous snapshot.
func (s *Store) publish(snap *pebble.Snapshot, fn func()) {
	h := &heldSnap{snap: snap}
	h.refs.Store(1)
	s.pub.Lock()
	old := s.pub.held
	s.pub.snap, s.pub.held = snap, h
	s.pub.seq++
	fn()
	s.pub.Unlock()
	old.release()
}

// heldSnap is a published snapshot and its users: the publication until
// the next one replaces it, and every Held of it. The last to let go
// closes it.
type heldSnap struct {
	snap *pebble.Snapshot
	refs atomic.Int32
}

func (h *heldSnap) release() {
	if h.refs.Add(-1) == 0 {
		_ = h.snap.Close()
	}
}

// Held is a published state version held for a long read (a Flight scan
// of a whole view) without pinning it: it holds the version's Pebble
// snapshot, so publications go on while it is read. Close it when done.
type Held struct {
	s     *Store
	h     *heldSnap
	seq   uint64
	stats Stats
	now   int64
}

// Hold holds the newest published version (see Held).
func (s *Store) Hold() (*Held, error) {
	v, err := s.Pin()
	if err != nil {
		return nil, err
	}
	h := s.pub.held
	h.refs.Add(1)
	out := &Held{s: s, h: h, seq: v.seq, stats: v.stats, now: v.now}
	v.Release()
	return out, nil
}

// Close lets go of the version. (After the store is closed there is
// nothing to let go of: Close has closed the DB.)
func (h *Held) Close() {
	if h.s.acquire() != nil {
		return
	}
	defer h.s.release()
	h.h.release()
}

// Seq numbers the version among the store's publications since Open: two
// Helds of one Seq read the same state.
func (h *Held) Seq() uint64 { return h.seq }

// Now is the read clock of the version (see Version.Now).
func (h *Held) Now() int64 { return h.now }

// At is Store.At with the version's read clock.
func (h *Held) At(asOf int64) ReadTime {
	if asOf == 0 {
		asOf = h.now
	}
	return ReadTime{Now: h.now, AsOf: asOf}
}

// EventClock reports whether the read clock is the event clock (so that
// Now is a function of the version alone).
func (h *Held) EventClock() bool { return h.s.opts.Clock == "event" }

// Scan is Store.Scan in the version.
func (h *Held) Scan(v *View, lo, hi string, idx []int, rt ReadTime, fn func(*Row) error) error {
	if err := h.s.acquire(); err != nil {
		return err
	}
	defer h.s.release()
	return h.s.scanIn(h.h.snap, v, lo, hi, idx, rt, fn)
}

// SplitIDs is Store.SplitIDs in the version.
func (h *Held) SplitIDs(v *View, k int) ([]string, error) {
	return h.s.splitIDs(h.h.snap, v, h.stats, k)
}

// Stats are the store's counters as of the version.
func (v *Version) Stats() Stats { return v.stats }

// Seq numbers the version among the store's publications since Open (as
// Held.Seq): two Versions of one Seq read the same state, features and
// models alike.
func (v *Version) Seq() uint64 { return v.seq }

// Now is the read clock as of the pin: the newest event time of the
// version with the event clock, the wall clock at the pin otherwise.
func (v *Version) Now() int64 { return v.now }

// ReadKey returns a copy of the value of key in the version.
func (v *Version) ReadKey(key []byte) ([]byte, bool, error) { return getFrom(v.snap, key) }

// User returns the record of user id.
func (v *Version) User(id string) (UserRecord, bool, error) {
	var u UserRecord
	b, ok, err := getFrom(v.snap, userKey(id))
	if err != nil || !ok {
		return u, false, err
	}
	return u, true, u.decode(b)
}

// Item returns the record of item id, through the read cache of item
// records (a recommendation reads hundreds).
func (v *Version) Item(id string) (ItemRecord, bool, error) {
	rec, err := v.ItemRef(id)
	if err != nil || rec == nil {
		return ItemRecord{Pop: math.Inf(-1)}, false, err
	}
	return *rec, true, nil
}

// ItemRef is Item without the copy, for readers of hundreds of items: the
// record (nil when the item has none) is shared with other readers through
// the read cache and must not be modified.
func (v *Version) ItemRef(id string) (*ItemRecord, error) {
	s := v.s
	rec, ok, gen := s.itemReads.Get(id)
	if !ok {
		rec = &ItemRecord{Pop: math.Inf(-1)}
		b, found, err := getFrom(v.snap, itemKey(id))
		if err == nil && found {
			err = rec.decode(b)
		}
		if err != nil {
			return nil, err
		}
		if !found {
			rec = nil // a miss is cached too: candidates of expired items
		}
		s.itemReads.Put(id, rec, gen)
	}
	return rec, nil
}

// Purchased reports whether user bought item.
func (v *Version) Purchased(user, item string) (bool, error) {
	_, closer, err := v.snap.Get(boughtKey(user, item))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, closer.Close()
}

// PurchasedItems returns the items user bought, read in one scan, when
// there are at most limit; complete is false (and items nil) when there
// are more, and the caller asks Purchased item by item.
func (v *Version) PurchasedItems(user string, limit int) (items map[string]bool, complete bool, err error) {
	p := makeKey(prefixBought, user, "")
	iter, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, false, err
	}
	items = make(map[string]bool)
	for iter.First(); iter.Valid(); iter.Next() {
		if len(items) == limit {
			return nil, false, iter.Close()
		}
		items[string(iter.Key()[len(p):])] = true
	}
	return items, true, errors.Join(iter.Error(), iter.Close())
}

// Popular returns up to k items of category ("" for all) by descending
// popularity as of the version's newest event, skipping those for which
// skip returns true.
func (v *Version) Popular(category string, k int, skip func(item string) bool) ([]Scored, error) {
	s := v.s
	t := s.pub.pop[category] // stable while the version is pinned
	if t == nil || k <= 0 {
		return nil, nil
	}
	ref := float64(v.stats.MaxTS) / s.halfMS
	var out []Scored
	t.Ascend(func(e popEntry) bool {
		if skip == nil || !skip(e.id) {
			out = append(out, Scored{ItemID: e.id, Score: math.Exp2(e.pop - ref)})
		}
		return len(out) < k
	})
	return out, nil
}

// TopItems is Store.TopItems in the version.
func (v *Version) TopItems(category string, asOf, w int64, k int, weighted bool, by Behavior) ([]Scored, error) {
	if category == "" && w == coarseTile && weighted {
		if list, ok := v.Trending(asOf, k); ok {
			return list, nil
		}
	}
	return v.s.topItems(v.snap, category, asOf, w, k, weighted, by)
}

// Trending returns what TopItems("", asOf, 1 h, k, weighted) returns, from
// the in-memory trending index (trendindex.go): the walk of k entries.
// ok is false when the index does not hold that window (asOf not in the
// hour of the version's read clock, or its hour's last millisecond), and
// TopItems reads the hourly counts.
func (v *Version) Trending(asOf int64, k int) (list []Scored, ok bool) {
	return v.s.pub.trend.top(asOf, k) // stable while the version is pinned
}

// SeenItems returns the items user touched after now − SeenTTL (at most
// SeenLimit, the newest), as a set. Days are read newest first, from the
// day of the version's newest event if that is past now (events may be a
// little ahead of the clock).
func (v *Version) SeenItems(user string, now int64) (map[string]bool, error) {
	s := v.s
	since := now - s.SeenTTL()
	hi := int64(dayOf(max(now, v.stats.MaxTS)))
	lo := int64(dayOf(max(since, 0)))
	limit := s.opts.SeenLimit
	seen := make(map[string]bool)
	for day := hi; day >= lo && len(seen) < limit; day-- {
		b, ok, err := getFrom(v.snap, seenKey(uint32(day), user))
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		old := false
		err = decodeSeen(b, func(lo, hi int, off uint32) bool {
			if day*dayMS+int64(off) <= since {
				old = true // newest first: the rest is older still
				return false
			}
			seen[string(b[lo:hi])] = true
			return len(seen) < limit
		})
		if err != nil {
			return nil, fmt.Errorf("seen items of %q: %w", user, err)
		}
		if old {
			break
		}
	}
	return seen, nil
}

// pinned runs fn on the newest published version (the Store's read
// methods: each call is one version).
func pinned[T any](s *Store, fn func(v *Version) (T, error)) (T, error) {
	v, err := s.Pin()
	if err != nil {
		var zero T
		return zero, err
	}
	defer v.Release()
	return fn(v)
}
