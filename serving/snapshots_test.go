package serving

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// serveFlight serves fsrv and returns a client of it.
func serveFlight(t *testing.T, fsrv *FlightServer) flight.Client {
	t.Helper()
	gs := fsrv.GRPCServer()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	c, err := flight.NewClientWithMiddleware(l.Addr().String(), nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// scanRows reads every endpoint of the query cmd and returns its rows,
// one string per row (the columns' values), in the order read.
func scanRows(t *testing.T, c flight.Client, cmd string) []string {
	t.Helper()
	ctx := context.Background()
	info, err := c.GetFlightInfo(ctx, &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte(cmd)})
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, ep := range info.Endpoint {
		stream, err := c.DoGet(ctx, ep.Ticket)
		if err != nil {
			t.Fatal(err)
		}
		rd, err := flight.NewRecordReader(stream)
		if err != nil {
			t.Fatal(err)
		}
		for rd.Next() {
			rec := rd.Record()
			for i := range int(rec.NumRows()) {
				var b strings.Builder
				for j := range int(rec.NumCols()) {
					fmt.Fprintf(&b, "%s=%s ", rec.ColumnName(j), rec.Column(j).ValueStr(i))
				}
				rows = append(rows, b.String())
			}
		}
		if err := rd.Err(); err != nil {
			t.Fatal(err)
		}
		rd.Release()
	}
	return rows
}

// Full scans served from the columnar snapshot equal the scans computed
// entity by entity, for every column set, partitioning and as_of, and
// follow new versions; a snapshot over its budget is not used.
func TestFlightSnapshotsMatchScans(t *testing.T) {
	e := newEnv(t)
	var evs []*recsysv1.Event
	for i := range 700 {
		beh := []string{"view", "view", "cart", "fav", "purchase"}[i%5]
		evs = append(evs, &recsysv1.Event{UserId: fmt.Sprintf("u%04d", i%450), ItemId: fmt.Sprintf("i%d", i%37), CategoryId: fmt.Sprintf("c%d", i%5),
			Behavior: beh, Ts: baseTS + int64(i)*97_000})
	}
	e.ingest(t, evs[:500])
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	snapSrv := NewFlightServer(e.store, e.models, mem)
	snapSrv.batchRows = 64
	withSnap := serveFlight(t, snapSrv)
	plainSrv := NewFlightServer(e.store, e.models, mem).WithSnapshotBytes(-1)
	plain := serveFlight(t, plainSrv)
	tinySrv := NewFlightServer(e.store, e.models, mem).WithSnapshotBytes(1000)
	tiny := serveFlight(t, tinySrv)
	queries := []string{
		`{"view":"user_features","partitions":1}`,
		`{"view":"user_features","partitions":3}`,
		`{"view":"user_features","columns":["view_count_1h","distinct_items_24h","recent_items","seconds_since_last_event"],"partitions":4}`,
		fmt.Sprintf(`{"view":"user_features","as_of":%d,"partitions":2}`, baseTS+200*97_000),
		`{"view":"item_features","partitions":2}`,
		`{"view":"item_features","columns":["trend_score","category_id"],"partitions":1}`,
	}
	check := func(round string) {
		for _, q := range queries {
			want := scanRows(t, plain, q)
			if len(want) == 0 {
				t.Fatalf("%s: %s: no rows", round, q)
			}
			for name, c := range map[string]flight.Client{"snapshot": withSnap, "over budget": tiny} {
				got := scanRows(t, c, q)
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Fatalf("%s: %s: %s read %d rows unlike the scan's %d; first: %q vs %q", round, q, name, len(got), len(want), got[:min(1, len(got))], want[0])
				}
			}
		}
	}
	check("first version")
	held, err := e.store.Hold()
	if err != nil {
		t.Fatal(err)
	}
	seq := held.Seq()
	held.Close()
	s := snapSrv.snaps.byView["user_features"]
	if s == nil || s.err != nil || s.key.seq != seq || len(s.recs) < 2 {
		t.Fatalf("user_features snapshot %+v, want one of version %d in several batches", s, seq)
	}
	if ts := tinySrv.snaps.byView["user_features"]; ts == nil || ts.err != errSnapshotTooBig || ts.recs != nil {
		t.Fatalf("over-budget snapshot %+v, want errSnapshotTooBig and no batches", ts)
	}
	e.ingest(t, evs[500:])
	check("second version")
	if s2 := snapSrv.snaps.byView["user_features"]; s2 == s || s2.key.seq <= seq {
		t.Fatalf("the snapshot was not replaced after new events (seq %d, was %d)", s2.key.seq, seq)
	}
	mem.AssertSize(t, 0)
}
