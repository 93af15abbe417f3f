package featurestore

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func sampleUserRecords() []UserRecord {
	var full []Recent
	for i := range MaxRecent {
		full = append(full, Recent{ID: strings.Repeat("x", i) + "é", TS: t0 - int64(i)*1000})
	}
	return []UserRecord{
		{},
		{Counters: Counters{Count: [numBehaviors]int64{1, 0, 0, 0}, LastTS: [numBehaviors]int64{t0, 0, 0, 0}, FirstTS: t0, LastTSAny: t0},
			RecentItems: []Recent{{ID: "i", TS: t0}}, RecentCategories: []Recent{{ID: "c", TS: t0}}},
		{Counters: Counters{Count: [numBehaviors]int64{math.MaxInt64, -1, 1 << 40, 7}, LastTS: [numBehaviors]int64{math.MinInt64, -5, 0, math.MaxInt64},
			FirstTS: -1, LastTSAny: math.MaxInt64},
			RecentItems: full, RecentCategories: []Recent{{ID: "", TS: 0}, {ID: strings.Repeat("long", 100), TS: -1}}},
	}
}

func sampleItemRecords() []ItemRecord {
	return []ItemRecord{
		{Pop: math.Inf(-1)},
		{},
		{Counters: Counters{Count: [numBehaviors]int64{3, 2, 1, 0}, LastTS: [numBehaviors]int64{t0, t0 - 1, t0 - 2, 0}, FirstTS: t0 - 9, LastTSAny: t0},
			CategoryID: "cat/ü\x01", CategoryTS: t0, Pop: 78700.123456789},
		{CategoryID: strings.Repeat("c", 300), CategoryTS: math.MinInt64, Pop: math.Inf(1)},
		{Pop: math.NaN()},
		{Pop: math.Copysign(0, -1)},
	}
}

// normUser makes nil and empty lists compare equal.
func normUser(u UserRecord) UserRecord {
	if u.RecentItems == nil {
		u.RecentItems = []Recent{}
	}
	if u.RecentCategories == nil {
		u.RecentCategories = []Recent{}
	}
	return u
}

func itemEqual(a, b ItemRecord) bool {
	return a.Counters == b.Counters && a.CategoryID == b.CategoryID && a.CategoryTS == b.CategoryTS &&
		math.Float64bits(a.Pop) == math.Float64bits(b.Pop)
}

func TestUserRecordRoundTrip(t *testing.T) {
	for i, r := range sampleUserRecords() {
		b := r.appendTo([]byte("prefix"))
		if !bytes.HasPrefix(b, []byte("prefix")) {
			t.Fatalf("appendTo did not append")
		}
		b = b[len("prefix"):]
		var got UserRecord
		if err := got.decode(b); err != nil {
			t.Fatalf("record %d: decode: %v", i, err)
		}
		if !userEqual(normUser(got), normUser(r)) {
			t.Errorf("record %d: round trip\n got %+v\nwant %+v", i, got, r)
		}
		checkCorruptions(t, b, func(b []byte) error { var u UserRecord; return u.decode(b) })
	}
}

func TestItemRecordRoundTrip(t *testing.T) {
	for i, r := range sampleItemRecords() {
		b := r.appendTo(nil)
		var got ItemRecord
		if err := got.decode(b); err != nil {
			t.Fatalf("record %d: decode: %v", i, err)
		}
		if !itemEqual(got, r) {
			t.Errorf("record %d: round trip\n got %+v\nwant %+v", i, got, r)
		}
		checkCorruptions(t, b, func(b []byte) error { var it ItemRecord; return it.decode(b) })
	}
}

// checkCorruptions decodes damaged copies of the valid encoding b: each
// must fail with ErrCorrupt, without panicking.
func checkCorruptions(t *testing.T, b []byte, decode func([]byte) error) {
	t.Helper()
	try := func(what string, d []byte) {
		t.Helper()
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("%s: decode(%x) panicked: %v", what, d, r)
			}
		}()
		if err := decode(d); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decode(%x) = %v, want ErrCorrupt", what, d, err)
		}
	}
	for n := range len(b) {
		try("truncated", b[:n])
	}
	try("trailing byte", append(slices.Clip(b), 0))
	for _, v := range []byte{0, recordVersion + 1, 0xff} {
		d := slices.Clone(b)
		d[0] = v
		try("version", d)
	}
}

func TestRecordDecodeCorrupt(t *testing.T) {
	overlong := append([]byte{recordVersion}, bytes.Repeat([]byte{0x80}, 11)...)
	// 21 recent items is more than any encoder writes.
	tooMany := (&UserRecord{}).appendTo(nil)
	tooMany = tooMany[:len(tooMany)-2]
	tooMany = append(tooMany, MaxRecent+1)
	for range MaxRecent + 1 {
		tooMany = append(tooMany, 1, 'a', 2)
	}
	tooMany = append(tooMany, 0)
	// A string length far beyond the data.
	longStr := (&ItemRecord{}).appendTo(nil)
	longStr = longStr[:11] // version + 10 one-byte varints
	longStr = append(longStr, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a')

	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"overlong varint", overlong},
		{"too many recent items", tooMany},
		{"long string", longStr},
	} {
		var u UserRecord
		if err := u.decode(tc.b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: UserRecord.decode = %v, want ErrCorrupt", tc.name, err)
		}
		var it ItemRecord
		if err := it.decode(tc.b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: ItemRecord.decode = %v, want ErrCorrupt", tc.name, err)
		}
	}
	// Sanity: the hand-built 20-item list (one fewer) decodes.
	ok := (&UserRecord{}).appendTo(nil)
	ok = ok[:len(ok)-3]
	ok = append(ok, MaxRecent)
	for range MaxRecent {
		ok = append(ok, 1, 'a', 2)
	}
	ok = append(ok, 0, 0) // no recent categories, no affinities
	var u UserRecord
	if err := u.decode(ok); err != nil || len(u.RecentItems) != MaxRecent || u.RecentItems[0] != (Recent{ID: "a", TS: 1}) {
		t.Errorf("20 recent items: %v, %+v", err, u.RecentItems)
	}
}

// FuzzUserRecordDecode checks that decoding arbitrary bytes never panics,
// fails only with ErrCorrupt, and that what it accepts re-encodes stably.
func FuzzUserRecordDecode(f *testing.F) {
	for _, r := range sampleUserRecords() {
		f.Add(r.appendTo(nil))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r UserRecord
		if err := r.decode(b); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error %v is not ErrCorrupt", err)
			}
			return
		}
		if len(r.RecentItems) > MaxRecent || len(r.RecentCategories) > MaxRecent {
			t.Fatalf("decoded %d/%d recent entries", len(r.RecentItems), len(r.RecentCategories))
		}
		enc := r.appendTo(nil)
		var r2 UserRecord
		if err := r2.decode(enc); err != nil {
			t.Fatalf("re-decode of %x: %v", enc, err)
		}
		if !userEqual(normUser(r), normUser(r2)) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", r, r2)
		}
		if enc2 := r2.appendTo(nil); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not stable: %x vs %x", enc, enc2)
		}
	})
}

// FuzzItemRecordDecode is FuzzUserRecordDecode for item records.
func FuzzItemRecordDecode(f *testing.F) {
	for _, r := range sampleItemRecords() {
		f.Add(r.appendTo(nil))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r ItemRecord
		if err := r.decode(b); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error %v is not ErrCorrupt", err)
			}
			return
		}
		enc := r.appendTo(nil)
		var r2 ItemRecord
		if err := r2.decode(enc); err != nil {
			t.Fatalf("re-decode of %x: %v", enc, err)
		}
		if !itemEqual(r, r2) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", r, r2)
		}
		if enc2 := r2.appendTo(nil); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not stable: %x vs %x", enc, enc2)
		}
	})
}
