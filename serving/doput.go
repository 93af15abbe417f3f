package serving

import (
	"encoding/json"
	"slices"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// putChunk is the most events ingested at once from a DoPut batch.
const putChunk = 10_000

// maxPutRejections bounds the rejections listed in a DoPut result.
const maxPutRejections = 100

// putResult is the JSON app metadata of DoPut's result.
type putResult struct {
	Accepted       int64            `json:"accepted"`
	Rejected       int64            `json:"rejected"`
	RejectedByCode map[string]int64 `json:"rejected_by_code"`
	Rejections     []putRejection   `json:"rejections"` // the first maxPutRejections
}

// putRejection is a rejected row; Index is its row number in the stream
// (always present, also when 0).
type putRejection struct {
	Index  int32  `json:"index"`
	Field  string `json:"field"`
	Code   string `json:"code"`
	Reason string `json:"reason"`
}

// DoPut with path ["events"] backfills events from an Arrow stream (for
// example a Parquet file read with pyarrow) through the same validation,
// watermark, dedup and durability as POST /v1/events. Columns: user_id,
// item_id, behavior (strings: any string-like type, see isStringLike), ts
// (a timestamp of any unit, or int64 Unix ms), and optionally category_id
// and event_id (strings); others are refused. One
// result carries the counts and the first rejections with their row index
// in the stream.
func (f *FlightServer) DoPut(stream flight.FlightService_DoPutServer) error {
	if f.upd == nil {
		return status.Error(codes.Unimplemented, "DoPut: ingest is not available on this server")
	}
	rdr, err := flight.NewRecordReader(stream, ipc.WithAllocator(f.mem))
	if err != nil {
		return invalidArg("stream", "want a FlightDescriptor and an Arrow schema: %v", err)
	}
	defer rdr.Release()
	d := rdr.LatestFlightDescriptor()
	if d == nil || d.Type != flight.DescriptorPATH || len(d.Path) != 1 || d.Path[0] != "events" {
		return invalidArg("descriptor", `want the path ["events"]`)
	}
	sch := rdr.Schema()
	col := func(name string, required bool, ok func(arrow.DataType) bool, want string) (int, error) {
		i := slices.IndexFunc(sch.Fields(), func(fl arrow.Field) bool { return fl.Name == name })
		if i < 0 {
			if required {
				return -1, invalidArg("schema", "column %s is required", name)
			}
			return -1, nil
		}
		if !ok(sch.Field(i).Type) {
			return -1, invalidArg("schema."+name, "type %s is not allowed (want %s)", sch.Field(i).Type, want)
		}
		return i, nil
	}
	for _, fl := range sch.Fields() {
		if !slices.Contains([]string{"user_id", "item_id", "behavior", "ts", "category_id", "event_id"}, fl.Name) {
			return invalidArg("schema", "unknown column %s (want user_id, item_id, category_id, behavior, ts, event_id)", fl.Name)
		}
	}
	var idx [6]int
	for i, c := range []struct {
		name     string
		required bool
	}{
		{"user_id", true}, {"item_id", true}, {"behavior", true}, {"ts", true}, {"category_id", false}, {"event_id", false},
	} {
		ok, want := isStringLike, stringLikeTypes
		if c.name == "ts" {
			ok, want = isTimeLike, timeLikeTypes
		}
		if idx[i], err = col(c.name, c.required, ok, want); err != nil {
			return err
		}
	}
	res := putResult{RejectedByCode: map[string]int64{}, Rejections: []putRejection{}}
	row := 0
	ctx := stream.Context()
	for rdr.Next() {
		rec := rdr.Record()
		var strs [6]func(int) (string, bool) // by the columns of idx; ts (3) apart
		for c, i := range idx {
			if i >= 0 && c != 3 {
				strs[c] = stringReader(rec.Column(i))
			}
		}
		str := func(c, i int) string {
			if strs[c] == nil {
				return ""
			}
			v, _ := strs[c](i) // null reads as "" (missing, for required columns)
			return v
		}
		ts := msReader(rec.Column(idx[3]))
		var evs []*recsysv1.Event
		var index []int
		flush := func() error {
			if len(evs) == 0 {
				return nil
			}
			out, err := f.upd.Ingest(ctx, evs, index)
			if err != nil {
				return toStatus(err)
			}
			res.Accepted += int64(out.Accepted)
			for _, r := range out.Rejected {
				res.Rejected++
				res.RejectedByCode[r.Code]++
				if len(res.Rejections) < maxPutRejections {
					res.Rejections = append(res.Rejections, putRejection{r.Index, r.Field, r.Code, r.Reason})
				}
			}
			evs, index = evs[:0], index[:0]
			return nil
		}
		// read makes the events of rows [lo, hi) of rec; reading arrays
		// that are malformed (see recoverMalformed) is an error, not a crash.
		read := func(lo, hi int) (err error) {
			defer recoverMalformed(&err, "stream", int64(row))
			for i := lo; i < hi; i++ {
				ev := &recsysv1.Event{UserId: str(0, i), ItemId: str(1, i), Behavior: str(2, i), CategoryId: str(4, i), EventId: str(5, i)}
				if ms, valid, bad := ts(i); valid {
					if bad != "" {
						return invalidArg("ts", "row %d: %s", row, bad)
					}
					ev.Ts = ms // null stays 0: rejected as missing
				}
				evs = append(evs, ev)
				index = append(index, row)
				row++
			}
			return nil
		}
		for lo := 0; lo < int(rec.NumRows()); lo += putChunk {
			if err := read(lo, min(lo+putChunk, int(rec.NumRows()))); err != nil {
				return err
			}
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := rdr.Err(); err != nil {
		return invalidArg("stream", "%v", err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&flight.PutResult{AppMetadata: b})
}
