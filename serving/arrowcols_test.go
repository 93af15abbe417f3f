package serving

import (
	"fmt"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

func TestStringReaderOfEveryStringLikeType(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	want := []string{"u1", "", "ü/ß", "a-rather-long-id-beyond-the-view-inline-limit"}
	valid := []bool{true, false, true, true}
	for _, dt := range []arrow.DataType{arrow.BinaryTypes.String, arrow.BinaryTypes.LargeString, arrow.BinaryTypes.StringView,
		arrow.BinaryTypes.Binary, arrow.BinaryTypes.LargeBinary, arrow.BinaryTypes.BinaryView,
		&arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}} {
		t.Run(dt.String(), func(t *testing.T) {
			if !isStringLike(dt) {
				t.Fatalf("%s is not string-like", dt)
			}
			b := array.NewBuilder(mem, dt)
			defer b.Release()
			for i, s := range want {
				switch {
				case !valid[i]:
					b.AppendNull()
				default:
					if bb, ok := b.(interface{ Append([]byte) }); ok { // binary builders parse base64
						bb.Append([]byte(s))
					} else if err := b.AppendValueFromString(s); err != nil {
						t.Fatal(err)
					}
				}
			}
			a := b.NewArray()
			defer a.Release()
			read := stringReader(a)
			for i, s := range want {
				got, ok := read(i)
				if ok != valid[i] || (ok && got != s) {
					t.Errorf("row %d = %q, %v; want %q, %v", i, got, ok, s, valid[i])
				}
			}
		})
	}
	for _, dt := range []arrow.DataType{arrow.PrimitiveTypes.Int64, arrow.FixedWidthTypes.Boolean,
		&arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.PrimitiveTypes.Int32}} {
		if isStringLike(dt) {
			t.Errorf("%s is string-like", dt)
		}
	}
}

func TestMsReaderOfEveryUnit(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	const ms = int64(1_767_225_600_123) // 2026-01-01T00:00:00.123Z
	for _, tc := range []struct {
		unit arrow.TimeUnit
		tz   string
		v    int64
		want int64
	}{
		{arrow.Second, "", ms / 1000, ms / 1000 * 1000},
		{arrow.Millisecond, "UTC", ms, ms},
		{arrow.Microsecond, "Europe/Berlin", ms*1000 + 999, ms},
		{arrow.Nanosecond, "", ms*1_000_000 + 999_999, ms},
		{arrow.Nanosecond, "UTC", -1, -1}, // rounded down, not toward zero
		{arrow.Microsecond, "", -1001, -2},
	} {
		dt := &arrow.TimestampType{Unit: tc.unit, TimeZone: tc.tz}
		b := array.NewTimestampBuilder(mem, dt)
		b.Append(arrow.Timestamp(tc.v))
		b.AppendNull()
		a := b.NewArray()
		b.Release()
		read := msReader(a)
		if got, ok, bad := read(0); got != tc.want || !ok || bad != "" {
			t.Errorf("%s %d = %d, %v, %q; want %d", dt, tc.v, got, ok, bad, tc.want)
		}
		if _, ok, _ := read(1); ok {
			t.Errorf("%s: a null reads as valid", dt)
		}
		a.Release()
	}
	b := array.NewTimestampBuilder(mem, &arrow.TimestampType{Unit: arrow.Second})
	b.Append(arrow.Timestamp(1 << 62))
	a := b.NewArray()
	b.Release()
	defer a.Release()
	if _, _, bad := msReader(a)(0); !strings.Contains(bad, "out of range") {
		t.Errorf("2^62 s: %q, want out of range", bad)
	}
}

func TestIntMillisUnitError(t *testing.T) {
	for _, tc := range []struct {
		v    int64
		want string
	}{
		{1_767_225_600, "Unix seconds?"},
		{0, "Unix seconds?"},
		{31_535_999_999, "Unix seconds?"},
		{946_684_800_000, ""},
		{1_767_225_600_000, ""},
		{253_402_300_799_999, ""},
		{1_767_225_600_000_000, "microseconds or nanoseconds?"},
		{1_767_225_600_000_000_000, "microseconds or nanoseconds?"},
		{-5, ""}, // before 1970: refused by its own rule
	} {
		got := intMillisUnitError(tc.v)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("intMillisUnitError(%d) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

// Dictionaries of every index type over every string-like value type
// (nulls in the indices and in the dictionary itself), and slices of every
// string-like array (the point-in-time join reads its batches in slices):
// each row reads as the value it stands for.
func TestStringReaderDictionariesAndSlices(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	values := []string{"u1", "", "ü/ß", "a-rather-long-id-beyond-the-view-inline-limit"}
	valueValid := []bool{true, false, true, true} // entry 1 of the dictionary is null
	build := func(dt arrow.DataType, vals []string, valid []bool) arrow.Array {
		b := array.NewBuilder(mem, dt)
		defer b.Release()
		for i, s := range vals {
			switch bb := b.(type) {
			case interface{ Append([]byte) }: // binary builders parse base64 from strings
				if valid[i] {
					bb.Append([]byte(s))
				} else {
					b.AppendNull()
				}
			default:
				if !valid[i] {
					b.AppendNull()
				} else if err := b.AppendValueFromString(s); err != nil {
					t.Fatal(err)
				}
			}
		}
		return b.NewArray()
	}
	valueTypes := []arrow.DataType{arrow.BinaryTypes.String, arrow.BinaryTypes.LargeString, arrow.BinaryTypes.StringView,
		arrow.BinaryTypes.Binary, arrow.BinaryTypes.LargeBinary, arrow.BinaryTypes.BinaryView}
	indexTypes := []arrow.DataType{arrow.PrimitiveTypes.Int8, arrow.PrimitiveTypes.Int16, arrow.PrimitiveTypes.Int32, arrow.PrimitiveTypes.Int64,
		arrow.PrimitiveTypes.Uint8, arrow.PrimitiveTypes.Uint16, arrow.PrimitiveTypes.Uint32, arrow.PrimitiveTypes.Uint64}
	// Rows: indices into values, -1 for a null index.
	rows := []int{3, 0, -1, 1, 2, 0, 3}
	wantRow := func(r int) (string, bool) {
		if rows[r] < 0 || !valueValid[rows[r]] {
			return "", false
		}
		return values[rows[r]], true
	}
	for _, vt := range valueTypes {
		dict := build(vt, values, valueValid)
		for _, it := range indexTypes {
			dt := &arrow.DictionaryType{IndexType: it, ValueType: vt}
			t.Run(dt.String(), func(t *testing.T) {
				if !isStringLike(dt) {
					t.Fatalf("%s is not string-like", dt)
				}
				strs := make([]string, len(rows))
				valid := make([]bool, len(rows))
				for r, v := range rows {
					strs[r], valid[r] = fmt.Sprint(max(v, 0)), v >= 0
				}
				idx := build(it, strs, valid)
				defer idx.Release()
				a := array.NewDictionaryArray(dt, idx, dict)
				defer a.Release()
				for _, lo := range []int{0, 2} { // whole, and a slice from row 2
					s := array.NewSlice(a, int64(lo), int64(len(rows)))
					read := stringReader(s)
					for i := range len(rows) - lo {
						want, wantOK := wantRow(lo + i)
						if got, ok := read(i); ok != wantOK || got != want {
							t.Errorf("slice from %d, row %d = %q, %v; want %q, %v", lo, i, got, ok, want, wantOK)
						}
					}
					s.Release()
				}
			})
		}
		// The plain array, sliced.
		t.Run(vt.String()+"/slice", func(t *testing.T) {
			s := array.NewSlice(dict, 1, 4)
			defer s.Release()
			read := stringReader(s)
			for i := range 3 {
				if got, ok := read(i); ok != valueValid[1+i] || (ok && got != values[1+i]) {
					t.Errorf("row %d = %q, %v; want %q, %v", i, got, ok, values[1+i], valueValid[1+i])
				}
			}
		})
		dict.Release()
	}
}
