package featurestore

import (
	"encoding/binary"
	"errors"
	"fmt"

	idbloom "github.com/bits-and-blooms/bloom/v3"
	"github.com/cockroachdb/pebble/v2"
)

// Deduplication. An event id is of one of two kinds, kept differently:
//
//   - A derived id (Event.Derived) is a hash of the event's content, its
//     time included, so a resend has the same time. The source rejects
//     events older than its watermark (the newest event time minus the
//     allowed lateness), so the dedup state of a derived id is needed only
//     while events of its time can still arrive. It is kept by hour of
//     event time: on disk under w<hour><16 bytes>, range-deleted once the
//     hour is Options.DedupWindow behind the newest applied event time; in
//     memory as one Bloom filter per hour, for the hours from the one
//     holding newest − AllowedLateness − 1h on. A derived id older than the
//     filters (a Kafka partition lagging the others) is looked up in
//     Pebble: its key is fixed by its time, so that is one point read.
//   - A client id may come back with any time, so it is kept for the
//     DedupHorizon under e<day><id> and looked up in every day of the
//     horizon around the event's time; one Bloom filter holds them all.
//
// The filters only spare Pebble lookups of new ids: a "maybe" is settled by
// Pebble, and they are rebuilt from the keys at open, so what is a
// duplicate depends only on the keys, which change with the apply batches.
// A derived id older than DedupWindow behind the newest event applied before
// it (which the watermark should have rejected) is applied as new without
// a lookup, whatever the batches, and counted (DedupStats.Beyond).

// filterFP is the false-positive rate the filters are sized for.
const filterFP = 0.01

// minHourIDs is the smallest capacity of an hour's filter.
const minHourIDs = 1 << 12

// dedup is the in-memory part of deduplication; only Open and Apply
// (under applyMu) touch it.
type dedup struct {
	client *idFilter              // the client ids under prefixDedup
	hours  map[uint32]*hourFilter // derived ids by hour of event time, from memFloor on
	// memFloor is the first hour with a filter: the derived keys of an
	// hour from it on are all in the hour's filter.
	memFloor uint32
	// diskFloor is the first hour whose derived keys are kept: earlier
	// ones were range-deleted by the batch that moved it.
	diskFloor uint32
	// legacy is set when e keys hold ids of the derived form (a data dir
	// written before w keys): derived ids are looked up there too until
	// the horizon has removed them (at the next open after that).
	legacy bool
	beyond int64 // derived ids applied as new past DedupWindow
}

// hourFilter holds the derived ids of one hour of event time: Bloom
// filters, each new one as large as all before it, so an hour busier than
// its size hint costs no rebuild.
type hourFilter struct {
	fs          []*idbloom.BloomFilter
	n, capacity uint
}

func newHourFilter(capacity uint) *hourFilter {
	capacity = max(capacity, minHourIDs)
	return &hourFilter{fs: []*idbloom.BloomFilter{idbloom.NewWithEstimates(capacity, filterFP)}, capacity: capacity}
}

func (h *hourFilter) test(k []byte) bool {
	for _, f := range h.fs {
		if f.Test(k) {
			return true
		}
	}
	return false
}

func (h *hourFilter) add(k []byte) {
	if h.n >= h.capacity {
		h.fs = append(h.fs, idbloom.NewWithEstimates(h.capacity, filterFP))
		h.capacity *= 2
	}
	h.fs[len(h.fs)-1].Add(k)
	h.n++
}

func (h *hourFilter) bytes() uint64 {
	var n uint64
	for _, f := range h.fs {
		n += uint64(f.Cap()+63) / 64 * 8
	}
	return n
}

// batchIDs are the ids of the batch being built, not yet in Pebble.
type batchIDs struct {
	client  map[string]struct{}
	derived map[[21]byte]struct{}
}

func newBatchIDs() batchIDs {
	return batchIDs{client: make(map[string]struct{}), derived: make(map[[21]byte]struct{})}
}

// dedupFloors returns, for the newest applied event time maxTS, the first
// hour with an in-memory filter of derived ids and the first hour whose
// derived keys are kept (DedupWindow ≥ AllowedLateness + 1h, so disk ≤
// mem).
func (s *Store) dedupFloors(maxTS int64) (mem, disk uint32) {
	hour := func(ts int64) uint32 {
		if ts <= 0 {
			return 0
		}
		return hourOf(ts)
	}
	return hour(maxTS - s.opts.AllowedLateness.Milliseconds() - coarseTile), hour(maxTS - s.opts.DedupWindow.Milliseconds())
}

// dedupEvent decides whether ev, applied after events up to maxTS, is a
// duplicate. Otherwise it returns the key (and value) that records ev's id
// in the batch; nil for a derived id past the window.
func (s *Store) dedupEvent(ev *Event, off uint64, maxTS int64, ids batchIDs) (key, val []byte, dup bool, err error) {
	var k []byte
	derived := false
	if ev.Derived {
		k, derived = derivedKey(ev.TS, ev.ID)
	}
	if !derived {
		if _, dup := ids.client[ev.ID]; dup {
			return nil, nil, true, nil
		}
		dk := dedupKey(ev.TS, ev.ID)
		if s.dd.client.f.TestString(ev.ID) {
			if dup, err := s.seenID(ev.ID, ev.TS); err != nil || dup {
				return nil, nil, dup, err
			}
		} else {
			s.dd.client.f.AddString(ev.ID)
			s.dd.client.n++
		}
		ids.client[ev.ID] = struct{}{}
		return dk, binary.BigEndian.AppendUint64(nil, off), false, nil
	}
	hour := hourOf(ev.TS)
	if _, disk := s.dedupFloors(maxTS); hour < disk {
		s.dd.beyond++
		return nil, nil, false, nil
	}
	bk := [21]byte(k)
	if _, dup := ids.derived[bk]; dup {
		return nil, nil, true, nil
	}
	maybe := true
	if hour >= s.dd.memFloor {
		h := s.dd.hours[hour]
		if h == nil {
			// Sized like the busiest hour held: steady traffic fills it once.
			var hint uint
			for _, o := range s.dd.hours {
				hint = max(hint, o.n)
			}
			h = newHourFilter(hint)
			s.dd.hours[hour] = h
		}
		if maybe = h.test(k); !maybe {
			h.add(k)
		}
	}
	if !maybe && s.dd.legacy {
		maybe = s.dd.client.f.TestString(ev.ID)
	}
	if maybe {
		dup, err := s.has(k)
		if err == nil && !dup && s.dd.legacy {
			dup, err = s.has(dedupKey(ev.TS, ev.ID))
		}
		if err != nil || dup {
			return nil, nil, dup, err
		}
	}
	ids.derived[bk] = struct{}{}
	return k, nil, false, nil
}

// rotateDedup adds to b the range delete of the derived keys that the
// newest event time maxTS puts past the window; commitDedup drops the
// filters of the hours it put past the in-memory window once b is
// committed.
func (s *Store) rotateDedup(b *pebble.Batch, maxTS int64) error {
	if _, disk := s.dedupFloors(maxTS); disk > s.dd.diskFloor {
		return b.DeleteRange(prefixDerived, derivedHourPrefix(disk), nil)
	}
	return nil
}

func (s *Store) commitDedup(maxTS int64) {
	mem, disk := s.dedupFloors(maxTS)
	s.dd.diskFloor = max(s.dd.diskFloor, disk)
	if mem > s.dd.memFloor {
		s.dd.memFloor = mem
		for h := range s.dd.hours {
			if h < mem {
				delete(s.dd.hours, h)
			}
		}
	}
	if s.dd.client.n > s.dd.client.capacity {
		// The batch is committed; a failed rebuild only keeps the full
		// filter, whose false positives cost lookups, never correctness.
		if err := s.rebuildIDFilter(s.dd.client.n); err != nil {
			s.logger.Warn("cannot rebuild the event id filter; keeping the old one", "err", err)
		}
	}
}

func derivedHourPrefix(hour uint32) []byte {
	return binary.BigEndian.AppendUint32(append([]byte(nil), prefixDerived...), hour)
}

// openDedup builds the filters from the keys: the client ids, and the
// derived ids of the hours from the in-memory floor on.
func (s *Store) openDedup() error {
	mem, disk := s.dedupFloors(s.mu.stats.MaxTS)
	s.dd = &dedup{hours: make(map[uint32]*hourFilter), memFloor: mem, diskFloor: disk}
	if err := s.rebuildIDFilter(0); err != nil {
		return err
	}
	// Two passes: count the ids of each hour, then fill filters of that
	// size.
	counts := map[uint32]uint{}
	if err := s.eachKey(derivedHourPrefix(mem), prefixEnd(prefixDerived), func(k []byte) {
		counts[keyHour(k)]++
	}); err != nil {
		return fmt.Errorf("rebuild id filters: %w", err)
	}
	for h, n := range counts {
		s.dd.hours[h] = newHourFilter(n)
	}
	return s.eachKey(derivedHourPrefix(mem), prefixEnd(prefixDerived), func(k []byte) {
		s.dd.hours[keyHour(k)].add(k)
	})
}

func keyHour(k []byte) uint32 { return binary.BigEndian.Uint32(k[len(prefixDerived):]) }

// eachKey calls fn with every key in [lo, hi).
func (s *Store) eachKey(lo, hi []byte, fn func(k []byte)) error {
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	for iter.First(); iter.Valid(); iter.Next() {
		fn(iter.Key())
	}
	return errors.Join(iter.Error(), iter.Close())
}

// idFilter is a Bloom filter sized for capacity ids holding about n.
type idFilter struct {
	f           *idbloom.BloomFilter
	n, capacity uint
}

// rebuildIDFilter sizes a new client id filter for twice the ids under
// prefixDedup (at least twice n, at least 1 Mi) and fills it from them. It
// notes whether some are in the derived form (legacy).
func (s *Store) rebuildIDFilter(n uint) error {
	var keys uint
	if err := s.eachKey(prefixDedup, prefixEnd(prefixDedup), func([]byte) { keys++ }); err != nil {
		return fmt.Errorf("rebuild id filter: %w", err)
	}
	capacity := max(2*max(n, keys), 1<<20)
	f := &idFilter{f: idbloom.NewWithEstimates(capacity, filterFP), capacity: capacity}
	legacy := false
	if err := s.eachKey(prefixDedup, prefixEnd(prefixDedup), func(k []byte) {
		id := k[len(prefixDedup)+4:]
		f.f.Add(id)
		f.n++
		if !legacy {
			_, legacy = derivedKey(0, string(id))
		}
	}); err != nil {
		return fmt.Errorf("rebuild id filter: %w", err)
	}
	s.dd.client, s.dd.legacy = f, legacy
	return nil
}

// seenID reports whether the client id was applied with an event time
// within the dedup horizon of ts. Dedup keys are bucketed by the day of
// their event time (so that they expire by range deletes), so an id reused
// with another time is looked up in every day of the horizon around ts.
func (s *Store) seenID(id string, ts int64) (bool, error) {
	h := s.opts.DedupHorizon.Milliseconds()
	for day := dayOf(ts - h); day <= dayOf(ts+h); day++ {
		ok, err := s.has(dedupKey(int64(day)*dayMS, id))
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// DedupStats describe the dedup filters in memory.
type DedupStats struct {
	ClientIDs, ClientBytes uint64 // client ids in the horizon, and their filter's bytes
	Hours                  int    // hours of event time with a filter of derived ids
	DerivedIDs             uint64 // derived ids in those hours
	DerivedBytes           uint64 // bytes of their filters
	// Beyond counts the derived ids since open that were older than the
	// DedupWindow behind the newest event time, applied as new.
	Beyond int64
	// DerivedDiskBytes and ClientDiskBytes estimate the flushed dedup keys
	// on disk (w and e keys).
	DerivedDiskBytes, ClientDiskBytes uint64
}

// DedupStats returns the sizes of the dedup filters and keys.
func (s *Store) DedupStats() DedupStats {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if err := s.acquire(); err != nil {
		return DedupStats{}
	}
	defer s.release()
	var err1, err2 error
	var d DedupStats
	d.DerivedDiskBytes, err1 = s.db.EstimateDiskUsage(prefixDerived, prefixEnd(prefixDerived))
	d.ClientDiskBytes, err2 = s.db.EstimateDiskUsage(prefixDedup, prefixEnd(prefixDedup))
	if err1 != nil || err2 != nil {
		d.DerivedDiskBytes, d.ClientDiskBytes = 0, 0
	}
	d = DedupStats{DerivedDiskBytes: d.DerivedDiskBytes, ClientDiskBytes: d.ClientDiskBytes, ClientIDs: uint64(s.dd.client.n), ClientBytes: uint64(s.dd.client.f.Cap()+63) / 64 * 8, Hours: len(s.dd.hours), Beyond: s.dd.beyond}
	for _, h := range s.dd.hours {
		d.DerivedIDs += uint64(h.n)
		d.DerivedBytes += h.bytes()
	}
	return d
}
