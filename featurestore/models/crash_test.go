package models_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/internal/storetest"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/featurestore/recommend"
)

// syncHookFS calls hook after every successful Sync of a file it created
// (sstables, manifests, the marker files) and of a directory it opened:
// the points where a checkpoint makes progress on disk.
type syncHookFS struct {
	vfs.FS
	hook func()
}

func (fs syncHookFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, cat)
	if err != nil {
		return nil, err
	}
	return syncHookFile{f, fs.hook}, nil
}

func (fs syncHookFS) OpenDir(name string) (vfs.File, error) {
	f, err := fs.FS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return syncHookFile{f, fs.hook}, nil
}

type syncHookFile struct {
	vfs.File
	hook func()
}

func (f syncHookFile) Sync() error {
	err := f.File.Sync()
	if err == nil {
		f.hook()
	}
	return err
}

// openCrashStore opens a store with its models on fs, checkpointing after
// every batch (CheckpointInterval 1 ms).
func openCrashStore(t *testing.T, fs vfs.FS) *testStore {
	t.Helper()
	m, err := models.New(smallModels)
	if err != nil {
		t.Fatal(err)
	}
	st, err := featurestore.Open("db", featurestore.Options{FS: fs, Logger: storetest.QuietLogger(), CacheBytes: 8 << 20, Clock: "event", Learner: m, CheckpointInterval: time.Millisecond})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	s := &testStore{Store: st, M: m, Rec: recommend.New(st, m)}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// dumpFeatures renders every feature of the user and item views for ids.
func dumpFeatures(t *testing.T, s *testStore, users, items []string) string {
	t.Helper()
	var b strings.Builder
	for _, rd := range []struct {
		v   *featurestore.View
		ids []string
	}{{featurestore.UserView, users}, {featurestore.ItemView, items}} {
		idx, err := rd.v.Resolve(nil)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := s.Get(rd.v, rd.ids, idx, s.At(0))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			fmt.Fprintf(&b, "%s %s %v %+v\n", rd.v.Name, r.ID, r.Found, r.Values)
		}
	}
	return b.String()
}

// TestCrashDuringCheckpoint kills the store at every point where a
// checkpoint (a flush of its memtables, in the background while the next
// batches apply) makes progress on disk: after each sync of an sstable, a
// manifest, a marker or a directory, with exactly the synced data, and at
// some of them with part of the unsynced data too (a torn write). Each
// crash image opens at a consistent state (a batch boundary: the events
// applied are those below its offset), and applying the rest of the log
// from there gives exactly the features and model tables of a store that
// applied the whole log without a crash.
func TestCrashDuringCheckpoint(t *testing.T) {
	log := modelStream(5, 300)
	n := len(log)
	ref := openModelStore(t, vfs.NewMem(), "db", smallModels)
	applySplit(t, ref, log, []int{n})
	users, items := append(slices.Clone(dumpUsers), "u2", "u3"), append(slices.Clone(dumpItems), "i1", "i3")
	want := dumpAll(t, ref, users, items) + dumpFeatures(t, ref, users, items)

	mem := vfs.NewCrashableMem()
	var mu sync.Mutex
	var images []*vfs.MemFS
	rng := rand.New(rand.NewPCG(9, 9))
	syncs := 0
	s := openCrashStore(t, syncHookFS{mem, func() {
		mu.Lock()
		defer mu.Unlock()
		syncs++
		if syncs%2 == 0 {
			images = append(images, mem.CrashClone(vfs.CrashCloneCfg{}))
		}
		if syncs%5 == 0 {
			images = append(images, mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng}))
		}
	}})
	var ends []int
	for p := 0; p < n; {
		p = min(n, p+10+rng.IntN(20))
		ends = append(ends, p)
	}
	for i, q := range ends {
		p := 0
		if i > 0 {
			p = ends[i-1]
		}
		time.Sleep(2 * time.Millisecond) // the checkpoint is due: this batch's Apply starts one
		mustApply(t, s, log[q-1].Offset+1, log[p:q])
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	imgs := slices.Clone(images)
	mu.Unlock()
	if len(imgs) < 10 {
		t.Fatalf("only %d crash images over %d batches", len(imgs), len(ends))
	}
	if testing.Short() || len(imgs) > 24 {
		// An even sample: each image is a store opened and caught up.
		keep := 24
		if testing.Short() {
			keep = 8
		}
		var sample []*vfs.MemFS
		for i := range keep {
			sample = append(sample, imgs[i*len(imgs)/keep])
		}
		imgs = sample
	}
	boundary := map[uint64]int{0: 0}
	for _, q := range ends {
		boundary[log[q-1].Offset+1] = q
	}
	offsets := map[uint64]bool{}
	for k, img := range imgs {
		c := openCrashStore(t, img)
		st := c.Stats()
		q, ok := boundary[st.AppliedOffset]
		if !ok {
			t.Fatalf("image %d: applied offset %d is no batch boundary", k, st.AppliedOffset)
		}
		offsets[st.AppliedOffset] = true
		if q < n {
			var rest []int
			for _, e := range ends {
				if e > q {
					rest = append(rest, e-q)
				}
			}
			applySplit(t, c, log[q:], rest)
		}
		if got := dumpAll(t, c, users, items) + dumpFeatures(t, c, users, items); got != want {
			t.Fatalf("image %d (crashed at offset %d, then the rest applied): %s", k, st.AppliedOffset, diffLines(got, want))
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d crash images during %d checkpoints: %d distinct applied offsets, each then caught up to the uninterrupted state", len(imgs), len(ends), len(offsets))
	if len(offsets) < 3 {
		t.Errorf("the crash images hold only %d distinct states: the test crashes too few checkpoints", len(offsets))
	}
}
