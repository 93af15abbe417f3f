package featurestore_test

import (
	"encoding/hex"
	"hash/fnv"
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

// TestDiskUsage attributes bytes to their owners: longer user ids make the
// users' share grow by at least their bytes and leave the items' alone
// (without models, no item key or value holds a user id).
func TestDiskUsage(t *testing.T) {
	usage := func(pad func(string) string) (featurestore.DiskUsage, featurestore.Stats) {
		s, err := featurestore.Open("state", featurestore.Options{FS: vfs.NewMem(), Logger: storetest.QuietLogger(), CacheBytes: 4 << 20, Clock: "event"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		rng := rand.New(rand.NewPCG(5, 6))
		var next uint64
		batch := make([]featurestore.Entry, 2000)
		for range 3 {
			storetest.BenchEvents(rng, batch, &next)
			for i := range batch {
				batch[i].Event.UserID = pad(batch[i].Event.UserID)
			}
			if _, err := s.Apply(next, batch); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		du, err := s.DiskUsage(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return du, s.Stats()
	}
	short, st := usage(func(id string) string { return id })
	// 500 hex digits of noise per user (Pebble compresses repeated text).
	long, _ := usage(func(id string) string {
		h := fnv.New64a()
		h.Write([]byte(id))
		r := rand.New(rand.NewPCG(h.Sum64(), 0))
		noise := make([]byte, 250)
		for i := range noise {
			noise[i] = byte(r.Uint32())
		}
		return id + hex.EncodeToString(noise)
	})
	t.Logf("short ids: %+v; 500 more bytes per user id: %+v (%d users, %d items)", short, long, st.Users, st.Items)
	if short.Users == 0 || short.Items == 0 {
		t.Fatalf("users %d and items %d bytes: both must be counted", short.Users, short.Items)
	}
	if grown := int64(long.Users) - int64(short.Users); grown < st.Users*500/2 {
		t.Errorf("500 more bytes per user id grew the users' share by %d bytes for %d users", grown, st.Users)
	}
	if d := float64(long.Items) / float64(short.Items); d < 0.8 || d > 1.25 {
		t.Errorf("longer user ids changed the items' share %d -> %d bytes", short.Items, long.Items)
	}
}
