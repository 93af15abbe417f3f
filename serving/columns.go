package serving

import (
	"strconv"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// The two shapes of a features:get answer. Rows, the first shape: one
// EntityFeatures per id holding one FeatureValue per value (a
// google.protobuf.Value, a status, an RFC 3339 time), about 2.3 KB per
// item of the default view in JSON. Columns (format "columns"): the ids
// and the feature names once, one array of values and one of event times
// (Unix ms) per feature, and a sparse list of the values that are not
// present. gRPC fills FeatureColumns; REST writes its own flat JSON
// straight from the store's rows (appendColumns), without protobuf
// messages in between.

// parseFormat reads GetFeaturesRequest.format: whether the answer is
// columns.
func parseFormat(format string) (columns bool, err error) {
	switch format {
	case "", "rows":
		return false, nil
	case "columns":
		return true, nil
	}
	return false, invalidArg("format", "%q is not rows or columns (empty: rows)", truncate(format, 100))
}

// featureRead is what a features:get read returned: the view, the
// features read (indexes into v.Features, in request order) and one row
// per requested id, in request order.
type featureRead struct {
	v    *featurestore.View
	idx  []int
	rows []featurestore.Row
}

// rowsProto is the rows answer.
func (rd *featureRead) rowsProto() *recsysv1.GetFeaturesResponse {
	resp := &recsysv1.GetFeaturesResponse{View: rd.v.Name, Entities: make([]*recsysv1.EntityFeatures, len(rd.rows))}
	for r := range rd.rows {
		row := &rd.rows[r]
		ent := &recsysv1.EntityFeatures{Id: row.ID, Features: make([]*recsysv1.FeatureValue, len(rd.idx))}
		for j, i := range rd.idx {
			ent.Features[j] = featureValue(rd.v.Features[i], &row.Values[j])
		}
		resp.Entities[r] = ent
	}
	return resp
}

// eachStatus calls fn for the values that are not present, as
// FeatureColumns.status lists them, in order: once for an entity (j = -1)
// whose values all have the same status, else once per value (j indexes
// rd.idx).
func (rd *featureRead) eachStatus(fn func(r, j int, st featurestore.Status)) {
	for r := range rd.rows {
		vals := rd.rows[r].Values
		if len(vals) == 0 {
			continue
		}
		first, same := vals[0].Status, true
		for j := 1; j < len(vals) && same; j++ {
			same = vals[j].Status == first
		}
		if same {
			if first != featurestore.StatusPresent {
				fn(r, -1, first)
			}
			continue
		}
		for j := range vals {
			if st := vals[j].Status; st != featurestore.StatusPresent {
				fn(r, j, st)
			}
		}
	}
}

// eventTime is a value's event time as the columns carry it: 0 for none
// (the rows' null event_time).
func eventTime(val *featurestore.Value) int64 {
	return max(val.EventTS, 0)
}

// columnsProto is the columnar answer of gRPC.
func (rd *featureRead) columnsProto() *recsysv1.FeatureColumns {
	n := len(rd.rows)
	out := &recsysv1.FeatureColumns{Ids: make([]string, n), Columns: make([]*recsysv1.FeatureColumn, len(rd.idx))}
	for r := range rd.rows {
		out.Ids[r] = rd.rows[r].ID
	}
	for j, i := range rd.idx {
		f := &rd.v.Features[i]
		col := &recsysv1.FeatureColumn{Name: f.Name, Type: f.Kind.String(), EventTimeMs: make([]int64, n)}
		switch f.Kind {
		case featurestore.KindInt, featurestore.KindTimestamp:
			col.Int64Values = make([]int64, n)
		case featurestore.KindFloat:
			col.DoubleValues = make([]float64, n)
		case featurestore.KindString:
			col.StringValues = make([]string, n)
		case featurestore.KindStringList:
			col.ListOffsets = make([]int32, n+1)
		}
		for r := range rd.rows {
			val := &rd.rows[r].Values[j]
			col.EventTimeMs[r] = eventTime(val)
			if f.Kind == featurestore.KindStringList {
				if val.Status == featurestore.StatusPresent {
					col.ListValues = append(col.ListValues, val.List...)
				}
				col.ListOffsets[r+1] = int32(len(col.ListValues))
				continue
			}
			if val.Status != featurestore.StatusPresent {
				continue // the zero value
			}
			switch f.Kind {
			case featurestore.KindInt, featurestore.KindTimestamp:
				col.Int64Values[r] = val.Int
			case featurestore.KindFloat:
				col.DoubleValues[r] = val.Float
			case featurestore.KindString:
				col.StringValues[r] = val.Str
			}
		}
		out.Columns[j] = col
	}
	rd.eachStatus(func(r, j int, st featurestore.Status) {
		fs := &recsysv1.FeatureStatus{IdIndex: int32(r), Status: st.String()}
		if j >= 0 {
			fs.Feature = rd.v.Features[rd.idx[j]].Name
		}
		out.Status = append(out.Status, fs)
	})
	return out
}

// appendColumns writes the columnar answer of REST:
//
//	{"view":V,"ids":[...],"features":[names],
//	 "columns":{name:[value or null per id],...},
//	 "event_time_ms":{name:[Unix ms or null per id],...},
//	 "status":[{"id_index":i,"feature":name,"status":s},...]}
//
// A value that is not present is null (its status is listed; an entry
// without "feature" covers every feature of the entity), as is a number
// that is not finite (its status is present). Counts and times are
// written as exact integers.
func appendColumns(b []byte, rd *featureRead) []byte {
	b = append(b, `{"view":`...)
	b = appendString(b, rd.v.Name)
	b = append(b, `,"ids":[`...)
	for r := range rd.rows {
		if r > 0 {
			b = append(b, ',')
		}
		b = appendString(b, rd.rows[r].ID)
	}
	b = append(b, `],"features":[`...)
	for j, i := range rd.idx {
		if j > 0 {
			b = append(b, ',')
		}
		b = appendString(b, rd.v.Features[i].Name)
	}
	b = append(b, `],"columns":{`...)
	for j, i := range rd.idx {
		f := &rd.v.Features[i]
		if j > 0 {
			b = append(b, ',')
		}
		b = appendString(b, f.Name)
		b = append(b, ":["...)
		for r := range rd.rows {
			if r > 0 {
				b = append(b, ',')
			}
			b = appendColumnValue(b, f.Kind, &rd.rows[r].Values[j])
		}
		b = append(b, ']')
	}
	b = append(b, `},"event_time_ms":{`...)
	for j, i := range rd.idx {
		if j > 0 {
			b = append(b, ',')
		}
		b = appendString(b, rd.v.Features[i].Name)
		b = append(b, ":["...)
		for r := range rd.rows {
			if r > 0 {
				b = append(b, ',')
			}
			if ts := eventTime(&rd.rows[r].Values[j]); ts > 0 {
				b = strconv.AppendInt(b, ts, 10)
			} else {
				b = append(b, "null"...)
			}
		}
		b = append(b, ']')
	}
	b = append(b, `},"status":[`...)
	first := true
	rd.eachStatus(func(r, j int, st featurestore.Status) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, `{"id_index":`...)
		b = strconv.AppendInt(b, int64(r), 10)
		if j >= 0 {
			b = append(b, `,"feature":`...)
			b = appendString(b, rd.v.Features[rd.idx[j]].Name)
		}
		b = append(b, `,"status":"`...)
		b = append(b, st.String()...)
		b = append(b, `"}`...)
	})
	return append(b, "]}"...)
}

// appendColumnValue writes one value of a column of kind k.
func appendColumnValue(b []byte, k featurestore.Kind, val *featurestore.Value) []byte {
	if val.Status != featurestore.StatusPresent {
		return append(b, "null"...)
	}
	switch k {
	case featurestore.KindInt, featurestore.KindTimestamp:
		return strconv.AppendInt(b, val.Int, 10)
	case featurestore.KindFloat:
		return appendNumber(b, val.Float)
	case featurestore.KindString:
		return appendString(b, val.Str)
	case featurestore.KindStringList:
		b = append(b, '[')
		for i, s := range val.List {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, s)
		}
		return append(b, ']')
	}
	return append(b, "null"...)
}
