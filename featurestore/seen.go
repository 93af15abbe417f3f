package featurestore

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// The seen set is what exclude_seen filters by: every distinct item a user
// touched within the user TTL (SeenTTL), however long the user's history.
// It is kept per user and day of event time, one record under
//
//	s<day><user_id>\x00   the items user touched that day, each with the offset
//	                      of the newest touch from the day's start, newest first
//
// Apply merges one record per user and day of its batch (no read); the
// merge operator unions the lists, keeping the newest time of each item and
// the newest SeenLimit items (by time, then id), which is associative, so
// the result does not depend on how merges are grouped. Expire removes old
// days by range deletes, like tiles. A read walks the user's days newest
// first (at most TTL days + 2 point reads) and stops at SeenLimit items.
//
// Exactness: a user with at most SeenLimit distinct items within the TTL
// has all of them; past that, the newest SeenLimit (every day keeps its
// newest SeenLimit, and newer days are read first) — older ones may be
// recommended again.

const prefixSeen = 's'

// maxSeenLimit bounds Options.SeenLimit: a day record of that many items
// (Taobao-sized ids) is about 1.5 MB.
const maxSeenLimit = 100_000

// seenKey is the key of user's seen record of day.
func seenKey(day uint32, user string) []byte {
	return appendSeenKey(make([]byte, 0, 1+4+len(user)+1), day, user)
}

func appendSeenKey(k []byte, day uint32, user string) []byte {
	k = append(k, prefixSeen)
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, user...)
	return append(k, 0)
}

// seenEntry is one item of a seen record: its newest touch, in ms from the
// start of the record's day.
type seenEntry struct {
	item string
	off  uint32
}

// sortSeen orders entries newest first, then by id, and keeps limit.
func sortSeen(list []seenEntry, limit int) []seenEntry {
	slices.SortFunc(list, func(a, b seenEntry) int {
		if a.off != b.off {
			return cmp.Compare(b.off, a.off)
		}
		return strings.Compare(a.item, b.item)
	})
	if len(list) > limit {
		list = list[:limit]
	}
	return list
}

// unionSeen keeps the newest entry of each item, then sorts and cuts the
// list as sortSeen does. It reorders list in place.
func unionSeen(list []seenEntry, limit int) []seenEntry {
	slices.SortFunc(list, func(a, b seenEntry) int {
		if c := strings.Compare(a.item, b.item); c != 0 {
			return c
		}
		return cmp.Compare(b.off, a.off)
	})
	list = slices.CompactFunc(list, func(a, b seenEntry) bool { return a.item == b.item })
	return sortSeen(list, limit)
}

// appendSeen encodes entries: per entry uvarint offset, uvarint length, id.
// A concatenation of encodings is an encoding of their union (before
// deduplication), so the merge operator may receive either.
func appendSeen(b []byte, list []seenEntry) []byte {
	for _, e := range list {
		b = binary.AppendUvarint(b, uint64(e.off))
		b = binary.AppendUvarint(b, uint64(len(e.item)))
		b = append(b, e.item...)
	}
	return b
}

// decodeSeen calls fn with the bounds of the id and the offset of every
// entry of an encoded record, in order, until fn returns false.
func decodeSeen(v []byte, fn func(lo, hi int, off uint32) bool) error {
	for i := 0; i < len(v); {
		off, n := binary.Uvarint(v[i:])
		if n <= 0 || off >= uint64(dayMS) {
			return fmt.Errorf("seen record: %w", ErrCorrupt)
		}
		i += n
		l, n := binary.Uvarint(v[i:])
		if n <= 0 || l > uint64(len(v)-i-n) {
			return fmt.Errorf("seen record: %w", ErrCorrupt)
		}
		i += n
		if !fn(i, i+int(l), uint32(off)) {
			return nil
		}
		i += int(l)
	}
	return nil
}

// seenMerger unions seen records (see the comment at the top). It keeps
// copies of the operands and decodes them once, in Finish.
type seenMerger struct {
	limit int
	buf   []byte
}

func (m *seenMerger) MergeNewer(value []byte) error {
	m.buf = append(m.buf, value...)
	return nil
}

func (m *seenMerger) MergeOlder(value []byte) error { return m.MergeNewer(value) }

func (m *seenMerger) Finish(bool) ([]byte, io.Closer, error) {
	str := string(m.buf) // one allocation for every id
	var list []seenEntry
	err := decodeSeen(m.buf, func(lo, hi int, off uint32) bool {
		list = append(list, seenEntry{str[lo:hi], off})
		return true
	})
	if err != nil {
		return nil, nil, err
	}
	return appendSeen(m.buf[:0], unionSeen(list, m.limit)), nil, nil
}

// seenBatch collects one apply batch's touches; flush writes one merge per
// user and day.
type seenBatch struct {
	limit   int
	touches []seenTouch
}

type seenTouch struct {
	user string
	day  uint32
	seenEntry
}

func newSeenBatch(limit int) *seenBatch { return &seenBatch{limit: limit} }

func (sb *seenBatch) add(ev *Event) {
	day := dayOf(ev.TS)
	sb.touches = append(sb.touches, seenTouch{ev.UserID, day, seenEntry{ev.ItemID, uint32(ev.TS - int64(day)*dayMS)}})
}

func (sb *seenBatch) flush(b *pebble.Batch) error {
	t := sb.touches
	slices.SortFunc(t, func(a, b seenTouch) int {
		if c := strings.Compare(a.user, b.user); c != 0 {
			return c
		}
		return cmp.Compare(a.day, b.day)
	})
	var list []seenEntry
	var key, val []byte
	for i := 0; i < len(t); {
		j := i + 1
		for j < len(t) && t[j].user == t[i].user && t[j].day == t[i].day {
			j++
		}
		list = list[:0]
		for _, x := range t[i:j] {
			list = append(list, x.seenEntry)
		}
		key = appendSeenKey(key[:0], t[i].day, t[i].user)
		val = appendSeen(val[:0], unionSeen(list, sb.limit))
		if err := b.Merge(key, val, nil); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// SeenTTL is how long a touched item stays in its user's seen set: the
// longest TTL of the user views (the longest of any view, or 7 days, when
// no user view has one).
func (s *Store) SeenTTL() int64 {
	var ttl int64
	for _, v := range s.defs.Views {
		if v.Entity == "user" {
			ttl = max(ttl, v.TTL.Milliseconds())
		}
	}
	if ttl == 0 {
		ttl = s.Retention() - dayMS
	}
	return ttl
}

// SeenLimit is how many items a user's seen set keeps (Options.SeenLimit).
func (s *Store) SeenLimit() int { return s.opts.SeenLimit }

// SeenItems returns the items user touched after now − SeenTTL (at most
// SeenLimit, the newest), as a set (see Version.SeenItems).
func (s *Store) SeenItems(user string, now int64) (map[string]bool, error) {
	return pinned(s, func(v *Version) (map[string]bool, error) { return v.SeenItems(user, now) })
}
