package serving

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// fastJSON is the REST marshaler. Feature responses, the hot read path, are
// encoded by hand (the same JSON that protojson writes with UseProtoNames
// and EmitUnpopulated, several times faster); everything else goes through
// protojson. Either way a number that is not finite (NaN, ±Inf) is JSON
// null: protojson would write the strings "NaN" and "Infinity" for double
// fields (and fail on such a google.protobuf.Value), which a client reading
// numbers cannot tell from data.
type fastJSON struct {
	*runtime.JSONPb
}

func (m fastJSON) Marshal(v any) ([]byte, error) {
	switch r := v.(type) {
	case *recsysv1.GetFeaturesResponse:
		if r.Columns == nil { // REST writes columns answers itself (appendColumns)
			return appendFeaturesResponse(nil, r), nil
		}
	case *recsysv1.EntityFeatures:
		return appendEntity(nil, r), nil
	}
	if r, ok := v.(proto.Message); ok {
		b, err := m.marshalFinite(r)
		if err != nil {
			return nil, err
		}
		return compact(b)
	}
	return m.JSONPb.Marshal(v)
}

// compact removes the whitespace protojson puts, on purpose at random
// between builds, after some colons and commas: answers are the same bytes
// from every build, so that scripts and docs can rely on them.
func compact(b []byte) ([]byte, error) {
	if bytes.IndexByte(b, ' ') < 0 {
		return b, nil
	}
	var out bytes.Buffer
	out.Grow(len(b))
	if err := json.Compact(&out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func (m fastJSON) NewEncoder(w io.Writer) runtime.Encoder {
	return runtime.EncoderFunc(func(v any) error {
		b, err := m.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	})
}

func appendFeaturesResponse(b []byte, r *recsysv1.GetFeaturesResponse) []byte {
	b = append(b, `{"view":`...)
	b = appendString(b, r.View)
	b = append(b, `,"entities":[`...)
	for i, e := range r.Entities {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEntity(b, e)
	}
	return append(b, "]}"...)
}

func appendEntity(b []byte, e *recsysv1.EntityFeatures) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, e.Id)
	b = append(b, `,"features":[`...)
	for i, f := range e.Features {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendString(b, f.Name)
		b = append(b, `,"value":`...)
		b = appendValue(b, f.Value)
		b = append(b, `,"status":`...)
		b = appendString(b, f.Status)
		b = append(b, `,"event_time":`...)
		b = appendTimestamp(b, f.EventTime)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

func appendValue(b []byte, v *structpb.Value) []byte {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return appendNumber(b, k.NumberValue)
	case *structpb.Value_StringValue:
		return appendString(b, k.StringValue)
	case *structpb.Value_BoolValue:
		return strconv.AppendBool(b, k.BoolValue)
	case *structpb.Value_ListValue:
		b = append(b, '[')
		for i, e := range k.ListValue.GetValues() {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendValue(b, e)
		}
		return append(b, ']')
	case *structpb.Value_StructValue:
		b = append(b, '{')
		first := true
		for key, e := range k.StructValue.GetFields() {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, key)
			b = append(b, ':')
			b = appendValue(b, e)
		}
		return append(b, '}')
	}
	return append(b, "null"...)
}

// appendNumber formats like ECMAScript (and encoding/json): no exponent
// between 1e-6 and 1e21.
func appendNumber(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	abs := math.Abs(f)
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		return strconv.AppendFloat(b, f, 'e', -1, 64)
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64)
}

// appendTimestamp writes RFC 3339 in UTC with 0, 3, 6 or 9 fractional
// digits, as protojson does.
func appendTimestamp(b []byte, ts *timestamppb.Timestamp) []byte {
	if ts == nil {
		return append(b, "null"...)
	}
	t := time.Unix(ts.Seconds, int64(ts.Nanos)).UTC()
	b = append(b, '"')
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	switch n := ts.Nanos; {
	case n == 0:
	case n%1_000_000 == 0:
		b = append(b, '.')
		b = appendPadded(b, int(n/1_000_000), 3)
	case n%1_000 == 0:
		b = append(b, '.')
		b = appendPadded(b, int(n/1_000), 6)
	default:
		b = append(b, '.')
		b = appendPadded(b, int(n), 9)
	}
	return append(b, `Z"`...)
}

func appendPadded(b []byte, n, width int) []byte {
	var buf [9]byte
	for i := width - 1; i >= 0; i-- {
		buf[i] = byte('0' + n%10)
		n /= 10
	}
	return append(b, buf[:width]...)
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, `\n`...)
			case '\r':
				b = append(b, `\r`...)
			case '\t':
				b = append(b, `\t`...)
			default:
				b = append(b, `\u00`...)
				b = append(b, hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
