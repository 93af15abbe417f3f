package updater

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
)

// chanSource is an outside source whose batches a test hands in one by one;
// it ends (ErrSourceEnd) or fails when told to.
type chanSource struct {
	in        chan *Batch
	end       error
	committed []*Batch
	gate      chan struct{} // when set, Committed waits for it: the next batches pile up meanwhile
}

func (s *chanSource) Next(ctx context.Context, max int) (*Batch, error) {
	select {
	case b, ok := <-s.in:
		if !ok {
			return nil, s.end
		}
		return b, nil
	case <-ctx.Done():
		return nil, nil
	}
}

func (s *chanSource) Committed(b *Batch, _ featurestore.ApplyResult) ([]time.Time, error) {
	s.committed = append(s.committed, b)
	if s.gate != nil {
		<-s.gate
		s.gate = nil
	}
	return nil, nil
}

func outsideBatch(i int) *Batch {
	ev := featurestore.Event{ID: fmt.Sprint("e", i), UserID: "u", ItemID: fmt.Sprint("i", i), Behavior: featurestore.BehaviorView, TS: testTS + int64(i)}
	return &Batch{Entries: []featurestore.Entry{{Offset: uint64(i), Event: ev}}, Records: 1, Since: []time.Time{time.Now()},
		Meta: []featurestore.KV{{Key: "test/pos", Value: []byte(fmt.Sprint(i + 1))}}}
}

// The loop commits every batch with its position, in order, and returns
// nil at the end of the source; batches read while one applies are merged
// (a later position replaces an earlier one), never lost or reordered.
func TestApplyCommitsInOrderAndMerges(t *testing.T) {
	checkGoroutines(t)
	e := openEnv(t, vfs.NewMem(), Options{})
	gate := make(chan struct{})
	src := &chanSource{in: make(chan *Batch, 10), end: ErrSourceEnd, gate: gate}
	var records int
	var fresh int
	done := make(chan error, 1)
	go func() {
		done <- Apply(context.Background(), e.store, src, LoopOptions{Logger: quietLogger(), MaxBatch: 100,
			OnBatch: func(n int, f []time.Duration) { records += n; fresh += len(f) }})
	}()
	src.in <- outsideBatch(0)
	// While batch 0 waits in Committed, three more are read and merged.
	for i := 1; i <= 3; i++ {
		src.in <- outsideBatch(i)
	}
	for len(src.in) > 0 {
		runtime.Gosched() // the reader takes them while batch 0 is held
	}
	close(gate)
	close(src.in)
	if err := <-done; err != nil {
		t.Fatalf("Apply = %v, want nil at the end of the source", err)
	}
	if st := e.store.Stats(); st.Events != 4 {
		t.Fatalf("events applied %d, want 4", st.Events)
	}
	meta, err := e.store.Meta("test/")
	if err != nil || string(meta["test/pos"]) != "4" {
		t.Fatalf("position %q (%v), want the last batch's 4", meta["test/pos"], err)
	}
	if records != 4 || fresh != 4 {
		t.Fatalf("OnBatch saw %d records and %d freshness values, want 4 and 4", records, fresh)
	}
	var n int
	for _, b := range src.committed {
		for _, en := range b.Entries {
			if en.Offset != uint64(n) {
				t.Fatalf("committed entry %d has offset %d: reordered", n, en.Offset)
			}
			n++
		}
	}
}

// A source's error ends the loop with it; a cancelled context ends it with
// nil. Either way the reader has exited when Apply returns.
func TestApplyStops(t *testing.T) {
	checkGoroutines(t)
	e := openEnv(t, vfs.NewMem(), Options{})
	boom := errors.New("boom")
	src := &chanSource{in: make(chan *Batch, 1), end: boom}
	close(src.in)
	if err := Apply(context.Background(), e.store, src, LoopOptions{Logger: quietLogger()}); !errors.Is(err, boom) {
		t.Fatalf("Apply = %v, want the source's error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Apply(ctx, e.store, &chanSource{in: make(chan *Batch)}, LoopOptions{Logger: quietLogger()})
	}()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Apply after cancel = %v, want nil", err)
	}
}
