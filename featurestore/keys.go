package featurestore

import (
	"encoding/binary"
	"strings"
)

// Key layout. Every key starts with a one-letter prefix and a slash; ids
// never contain NUL (the updater rejects them), so NUL separates parts.
//
//	m/applied                          offset one past the last applied log entry (8 bytes BE)
//	m/stats                            counters: events, duplicates, users, items, max event time
//	e<day><event_id>                   dedup marker of a client id; value: log offset (8 bytes BE); day of the event time (4 bytes BE)
//	w<hour><hash>                      dedup marker of a derived id: hour of the event time (4 bytes BE), the id's 16 bytes; empty value
//	t<day><res><kind><id>\x00<start>   tile: res c (1 h): behavior counts; res f (5 min): the events (offset, behavior)
//	h<day><hour><category>\x00<item>   hourly item counts per category ("" for all items)
//	u/<user_id>                        UserRecord
//	i/<item_id>                        ItemRecord
//	s<day><user_id>\x00                seen record: the user's items of that day, newest first (seen.go)
//	b/<user_id>\x00<item_id>           the user purchased the item (empty value)
//	p/<category_id>\x00<score><item_id> popularity index, score descending; category "" is global
const (
	keyApplied = "m/applied"
	keyStats   = "m/stats"
)

var (
	prefixDedup   = []byte("e")
	prefixDerived = []byte("w")
	prefixUser    = []byte("u/")
	prefixItem    = []byte("i/")
	prefixBought  = []byte("b/")
	prefixPop     = []byte("p/")
)

func makeKey(prefix []byte, parts ...string) []byte {
	n := len(prefix)
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n)
	k = append(k, prefix...)
	for i, p := range parts {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, p...)
	}
	return k
}

// dedupKey buckets ids by the day of their event time, so that the dedup
// set expires a day at a time; a resent event has the same time.
func dedupKey(ts int64, id string) []byte {
	k := make([]byte, 0, 5+len(id))
	k = append(k, prefixDedup...)
	k = binary.BigEndian.AppendUint32(k, dayOf(ts))
	return append(k, id...)
}

// hourOf is the hour of ts (hours since the epoch).
func hourOf(ts int64) uint32 { return uint32(floorTo(ts, coarseTile) / coarseTile) }

// derivedKey is the dedup key of a derived id (DerivedIDPrefix and 32 hex
// digits) of an event at ts: bucketed by the hour of the event time, so
// that the keys expire an hour at a time soon after the watermark passes.
// ok is false if id is not in the derived form.
func derivedKey(ts int64, id string) (k []byte, ok bool) {
	hexID, found := strings.CutPrefix(id, DerivedIDPrefix)
	if !found || len(hexID) != 32 {
		return nil, false
	}
	k = make([]byte, 0, 5+16)
	k = append(k, prefixDerived...)
	k = binary.BigEndian.AppendUint32(k, hourOf(ts))
	for i := 0; i < len(hexID); i += 2 {
		hi, ok1 := unhex(hexID[i])
		lo, ok2 := unhex(hexID[i+1])
		if !ok1 || !ok2 {
			return nil, false
		}
		k = append(k, hi<<4|lo)
	}
	return k, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// hourKeyLen is the length of an hourKey's fixed part ('h', day, hour).
const hourKeyLen = 1 + 4 + 8

// hourOfKey is the hour start of an hourKey (k at least hourKeyLen long).
func hourOfKey(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[5:hourKeyLen])) }

// hourKey is the key of item's count in category's hour starting at hour.
func hourKey(category string, hour int64, item string) []byte {
	k := make([]byte, 0, 1+4+8+len(category)+1+len(item))
	k = append(k, 'h')
	k = binary.BigEndian.AppendUint32(k, dayOf(hour))
	k = binary.BigEndian.AppendUint64(k, uint64(hour))
	k = append(k, category...)
	k = append(k, 0)
	return append(k, item...)
}
func userKey(id string) []byte           { return makeKey(prefixUser, id) }
func itemKey(id string) []byte           { return makeKey(prefixItem, id) }
func boughtKey(user, item string) []byte { return makeKey(prefixBought, user, item) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
