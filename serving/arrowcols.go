package serving

import (
	"fmt"
	"math"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"

	"github.com/streamrec/recsys/updater"
)

// Column readers of the Arrow streams clients send (DoPut events, DoExchange
// spines). pandas 3 and pyarrow >= 22 produce large_string columns (and
// string_view, large_binary, dictionaries for categoricals) and timestamps
// of any unit, so every string-like type is read where a string is
// expected, and timestamps of every unit are converted to milliseconds.
// The readers read the arrays in place; nothing is copied or cast.

// isStringLike reports whether a column of type dt can be read as strings:
// string, large_string, string_view, their binary counterparts (ids must
// still be valid UTF-8, as everywhere), and dictionaries of those.
func isStringLike(dt arrow.DataType) bool {
	switch dt.ID() {
	case arrow.STRING, arrow.LARGE_STRING, arrow.STRING_VIEW, arrow.BINARY, arrow.LARGE_BINARY, arrow.BINARY_VIEW:
		return true
	case arrow.DICTIONARY:
		return isStringLike(dt.(*arrow.DictionaryType).ValueType)
	}
	return false
}

// stringLikeTypes names the accepted string-like types, for errors.
const stringLikeTypes = "string, large_string, string_view, binary, large_binary, binary_view or a dictionary of them"

// stringReader returns the value of row i of a (isStringLike) column and
// whether it is valid (not null). The strings may point into the array's
// buffers: they are valid while the array is.
func stringReader(a arrow.Array) func(i int) (string, bool) {
	switch c := a.(type) {
	case *array.String:
		return func(i int) (string, bool) { return c.Value(i), c.IsValid(i) }
	case *array.LargeString:
		return func(i int) (string, bool) { return c.Value(i), c.IsValid(i) }
	case *array.StringView:
		return func(i int) (string, bool) { return c.Value(i), c.IsValid(i) }
	case *array.Binary:
		return func(i int) (string, bool) { return c.ValueString(i), c.IsValid(i) }
	case *array.LargeBinary:
		return func(i int) (string, bool) { return c.ValueString(i), c.IsValid(i) }
	case *array.BinaryView:
		return func(i int) (string, bool) { return c.ValueString(i), c.IsValid(i) }
	case *array.Dictionary:
		values := stringReader(c.Dictionary())
		return func(i int) (string, bool) {
			if c.IsNull(i) {
				return "", false
			}
			return values(c.GetValueIndex(i))
		}
	}
	panic(fmt.Sprintf("BUG: stringReader of %s", a.DataType()))
}

// recoverMalformed, deferred by the code that reads a client's arrays,
// turns a panic into INVALID_ARGUMENT naming field and the first row of
// the batch: the IPC reader checks buffer sizes but not, say, that string
// offsets ascend or that dictionary indices are within the dictionary,
// and reading such an array panics (it would take the server down). The
// partly built values are left to the garbage collector.
func recoverMalformed(err *error, field string, firstRow int64) {
	if r := recover(); r != nil {
		*err = invalidArg(field, "malformed Arrow data in the batch from row %d: %v", firstRow, r)
	}
}

// isTimeLike reports whether a column of type dt can be read as event
// times: a timestamp of any unit, with or without a time zone, or int64
// Unix milliseconds.
func isTimeLike(dt arrow.DataType) bool {
	return dt.ID() == arrow.TIMESTAMP || dt.ID() == arrow.INT64
}

// timeLikeTypes names the accepted time types, for errors.
const timeLikeTypes = "timestamp (s, ms, us or ns, with or without a time zone) or int64 Unix milliseconds"

// msReader returns row i of a (isTimeLike) column in Unix milliseconds,
// whether it is valid (not null), and why it is out of range ("" when it
// is not). An Arrow timestamp is an instant (its zone only says how to
// show it): a timestamp without a zone is read as UTC. Sub-millisecond
// parts are dropped (rounded down).
func msReader(a arrow.Array) func(i int) (int64, bool, string) {
	switch c := a.(type) {
	case *array.Int64:
		return func(i int) (int64, bool, string) { return c.Value(i), c.IsValid(i), "" }
	case *array.Timestamp:
		unit := c.DataType().(*arrow.TimestampType).Unit
		return func(i int) (int64, bool, string) {
			ms, ok := unitToMillis(int64(c.Value(i)), unit)
			if !ok {
				return 0, c.IsValid(i), fmt.Sprintf("%d %s is out of range", c.Value(i), unit)
			}
			return ms, c.IsValid(i), ""
		}
	}
	panic(fmt.Sprintf("BUG: msReader of %s", a.DataType()))
}

// unitToMillis converts v in unit to milliseconds, rounding down; false
// when the result does not fit in an int64.
func unitToMillis(v int64, unit arrow.TimeUnit) (int64, bool) {
	switch unit {
	case arrow.Second:
		if v > math.MaxInt64/1000 || v < math.MinInt64/1000 {
			return 0, false
		}
		return v * 1000, true
	case arrow.Millisecond:
		return v, true
	case arrow.Microsecond:
		return floorDiv(v, 1000), true
	case arrow.Nanosecond:
		return floorDiv(v, 1_000_000), true
	}
	return 0, false
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// maxIntMillis is the largest int64 time read as Unix milliseconds:
// 9999-12-31T23:59:59.999Z. Larger values can only be microseconds or
// nanoseconds.
const maxIntMillis = 253402300799999

// intMillisUnitError says why an int64 Unix-milliseconds time v can only
// be in another unit ("" when it can be milliseconds): before 1971-01-01
// (the rule of event times: almost always seconds), or after the year
// 9999 (microseconds or nanoseconds). The spine's hint is added: a
// timestamp column carries its unit.
func intMillisUnitError(v int64) string {
	if why := millisUnitReason(v); why != "" {
		return why + " An int64 ts must be Unix milliseconds; send a timestamp column for other units"
	}
	return ""
}

// millisUnitReason is the reason of intMillisUnitError, without a hint.
func millisUnitReason(v int64) string {
	switch {
	case v >= 0 && v < updater.MinTS:
		return fmt.Sprintf("%d is before 1971-01-01 as Unix milliseconds (%s): Unix seconds?",
			v, time.UnixMilli(v).UTC().Format(time.RFC3339))
	case v > maxIntMillis:
		return fmt.Sprintf("%d is after the year 9999 as Unix milliseconds: Unix microseconds or nanoseconds?", v)
	}
	return ""
}

// checkAsOf validates the as_of of a read (features:get, popular items,
// Flight commands and tickets), an int64 in Unix milliseconds: 0 reads
// now; others follow the rule of an int64 spine ts (not before 1970, and
// not a time that can only be in another unit), so that a time in seconds
// or microseconds is an error rather than a read of 1970 or of the far
// future. (The store answers as of any int64; this rule is for callers.)
func checkAsOf(v int64) error {
	switch {
	case v == 0:
		return nil
	case v < 0:
		return invalidArg("as_of", "%d is negative (Unix milliseconds expected; 0 or none reads now)", v)
	}
	if why := millisUnitReason(v); why != "" {
		return invalidArg("as_of", "%s as_of must be Unix milliseconds (0 or none reads now)", why)
	}
	return nil
}
