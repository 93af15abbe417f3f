package serving

import (
	"errors"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"golang.org/x/sync/errgroup"

	"github.com/streamrec/recsys/featurestore"
)

// Columnar snapshots of the views, for Flight full scans.
//
// A DoGet of a whole view (or of one partition of it) computes every
// window feature of every entity: about 6 µs a row, 20 times what sending
// the row costs. The rows are a function of the state version and the
// read time alone, so the first full scan of a version builds the
// snapshot: every feature of every entity as prebuilt Arrow record
// batches, on all cores. Later scans of the same version and read time,
// whatever their columns and partitions, are streamed from it: columns
// projected and batches sliced to the partition's ids, nothing computed.
// The endpoints of a partitioned read arrive together and share one
// build.
//
// Only with the event clock: the read time is then the version's newest
// event, so a store that is not being written to (loaded, replayed,
// backfilled: where training sets are pulled) keeps its snapshot. With
// the wall clock every read has its own read time, and a scan computes
// its rows as before. A view's snapshot is replaced by the next version's;
// it is bounded in bytes (--flight.snapshot-mb), and a view larger than
// that is scanned as before.

// defaultSnapshotBytes bounds the snapshots of all views together.
const defaultSnapshotBytes = 1 << 30

type snapKey struct {
	view      string
	seq       uint64
	now, asOf int64
}

// viewSnap is one view's snapshot: every feature, in id order.
type viewSnap struct {
	key   snapKey
	ready chan struct{} // closed once built (or failed)
	err   error
	recs  []arrow.Record
	first []string // per batch: its first and last id
	last  []string
	bytes int64
}

type snapshots struct {
	mu     sync.Mutex
	byView map[string]*viewSnap
}

var errSnapshotTooBig = errors.New("view larger than the snapshot budget")

// snapshot returns the snapshot of view v at held and rt, building it
// when it is not there yet, or nil when there is none to use (wall clock,
// disabled, too big, or its build failed: the caller scans).
func (f *FlightServer) snapshot(held *featurestore.Held, p *plan, rt featurestore.ReadTime) *viewSnap {
	limit := f.snapshotBytes
	if limit == 0 {
		limit = defaultSnapshotBytes
	}
	if limit < 0 || !held.EventClock() || !p.view.Scannable() {
		return nil
	}
	key := snapKey{p.view.Name, held.Seq(), rt.Now, rt.AsOf}
	f.snaps.mu.Lock()
	if f.snaps.byView == nil {
		f.snaps.byView = make(map[string]*viewSnap)
	}
	s := f.snaps.byView[key.view]
	if s != nil && s.key == key {
		f.snaps.mu.Unlock()
		<-s.ready
		if s.err != nil {
			return nil
		}
		return s
	}
	// Build it; the budget is what the other views' snapshots leave.
	var others int64
	for name, o := range f.snaps.byView {
		if name != key.view {
			select {
			case <-o.ready:
				others += o.bytes
			default:
			}
		}
	}
	s = &viewSnap{key: key, ready: make(chan struct{})}
	f.snaps.byView[key.view] = s
	f.snaps.mu.Unlock()
	s.err = s.build(held, p.view, rt, f.batchRows, limit-others)
	if s.err != nil {
		s.recs, s.first, s.last = nil, nil, nil
	}
	close(s.ready)
	if s.err != nil {
		return nil
	}
	return s
}

// build fills s with every feature of v at held and rt, scanning runs of
// ids in parallel, within budget bytes.
func (s *viewSnap) build(held *featurestore.Held, v *featurestore.View, rt featurestore.ReadTime, batchRows int, budget int64) error {
	if budget <= 0 {
		return errSnapshotTooBig
	}
	all, err := v.Resolve(nil)
	if err != nil {
		return err
	}
	full := &plan{view: v, idx: all, schema: viewSchema(v, all)}
	workers := runtime.GOMAXPROCS(0)
	splits, err := held.SplitIDs(v, workers)
	if err != nil {
		return err
	}
	bounds := append(append([]string{""}, splits...), "")
	parts := make([][]arrow.Record, len(bounds)-1)
	var used atomic.Int64
	mem := memory.NewGoAllocator() // batches are dropped, not released: the GC frees them
	var g errgroup.Group
	for i := range parts {
		g.Go(func() error {
			bb := newBatchBuilder(mem, full)
			defer bb.release()
			take := func() error {
				n := used.Add(int64(bb.bytes))
				parts[i] = append(parts[i], bb.b.NewRecord())
				bb.rows, bb.bytes = 0, 0
				if n > budget {
					return errSnapshotTooBig
				}
				return nil
			}
			err := held.Scan(v, bounds[i], bounds[i+1], all, rt, func(row *featurestore.Row) error {
				bb.append(row)
				if bb.rows < batchRows && bb.bytes < flightBatchBytes {
					return nil
				}
				return take()
			})
			if err == nil && bb.rows > 0 {
				err = take()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, part := range parts {
		for _, rec := range part {
			ids := rec.Column(0).(*array.String)
			s.recs = append(s.recs, rec)
			s.first = append(s.first, ids.Value(0))
			s.last = append(s.last, ids.Value(ids.Len()-1))
		}
	}
	s.bytes = used.Load()
	return nil
}

// write streams the rows of s with ids in [lo, hi) ("" hi: no bound), the
// columns of p, to w.
func (s *viewSnap) write(p *plan, w *flight.Writer) error {
	lo, hi := p.q.Lo, p.q.Hi
	cols := make([]arrow.Array, 1+len(p.idx))
	for i, rec := range s.recs {
		if s.last[i] < lo || (hi != "" && s.first[i] >= hi) {
			continue
		}
		ids := rec.Column(0).(*array.String)
		n := ids.Len()
		a := sort.Search(n, func(j int) bool { return ids.Value(j) >= lo })
		b := n
		if hi != "" {
			b = sort.Search(n, func(j int) bool { return ids.Value(j) >= hi })
		}
		if a >= b {
			continue
		}
		cols[0] = rec.Column(0)
		for j, fi := range p.idx {
			cols[j+1] = rec.Column(fi + 1)
		}
		out := array.NewRecord(p.schema, cols, int64(n))
		if a > 0 || b < n {
			sl := out.NewSlice(int64(a), int64(b))
			out.Release()
			out = sl
		}
		err := w.Write(out)
		out.Release()
		if err != nil {
			return err
		}
	}
	return nil
}
