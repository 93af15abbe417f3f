package featurestore_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/storetest"
)

// TestCheckpointInterval crashes a store (its files as they were synced)
// after two batches: the state that survives is that of the last
// checkpoint, whole and with its offset; a short interval checkpoints
// the second batch too, also when no batch follows it, while a long one
// does not.
func TestCheckpointInterval(t *testing.T) {
	const n = 500
	for _, tc := range []struct {
		interval time.Duration
		want     uint64 // applied offset that survives
	}{
		{time.Hour, n},                  // the first Apply after Open checkpoints, the second is within the hour
		{time.Millisecond, 2 * n},       // the second Apply checkpoints too
		{200 * time.Millisecond, 2 * n}, // no Apply follows the second: the checkpoint comes when it is due
	} {
		t.Run(tc.interval.String(), func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			s, err := featurestore.Open("state", featurestore.Options{FS: mem, Logger: storetest.QuietLogger(), CacheBytes: 4 << 20, Clock: "event", CheckpointInterval: tc.interval})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rng := rand.New(rand.NewPCG(3, 4))
			var next uint64
			batch := make([]featurestore.Entry, n)
			for range 2 {
				storetest.BenchEvents(rng, batch, &next)
				time.Sleep(2 * time.Millisecond)
				if _, err := s.Apply(next, batch); err != nil {
					t.Fatal(err)
				}
			}
			// The flush runs in the background: look at crash images until
			// the expected one appears, then a while longer for a wrong one.
			var got uint64
			deadline := time.Now().Add(10 * time.Second)
			for settle := 0; settle < 20 && time.Now().Before(deadline); {
				got = crashedOffset(t, mem)
				if got == tc.want {
					settle++
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got != tc.want {
				t.Fatalf("after a crash the applied offset is %d, want %d", got, tc.want)
			}
		})
	}
}

// crashedOffset opens what a crash now would leave of the store and
// returns its applied offset; the state must be that of exactly those
// events.
func crashedOffset(t *testing.T, mem *vfs.MemFS) uint64 {
	t.Helper()
	img := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	s, err := featurestore.Open("state", featurestore.Options{FS: img, Logger: storetest.QuietLogger(), CacheBytes: 4 << 20, Clock: "event"})
	if err != nil {
		t.Fatalf("open after a crash: %v", err)
	}
	defer s.Close()
	st := s.Stats()
	if st.Events != int64(st.AppliedOffset) {
		t.Fatalf("after a crash: %d events applied but the offset is %d", st.Events, st.AppliedOffset)
	}
	return st.AppliedOffset
}
