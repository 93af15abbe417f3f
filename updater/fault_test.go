package updater

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater/eventlog"
)

// Fault injection with Pebble's errorfs: a write or sync that fails in
// the event log, the store or a checkpoint is an error for the caller,
// never a panic, never an acknowledgement of what was not made durable,
// and never a half-written checkpoint.

// faultOn injects errorfs.ErrInjected into writes and syncs of files
// whose path contains part (and, with creates, into creating and linking
// them), while on.
//
// Pebble itself dies with a fatal runtime error (an unlock of an unlocked
// mutex while it panics) when it cannot create the next WAL file of a
// live instance, which no caller can recover from; that is why serve
// refuses ingest and pauses applying before the disk is full
// (ingest.min-free-bytes), and why the store's test below fails writes of
// existing files only.
func faultOn(part string, creates bool) *errorfs.Toggle {
	return &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		case errorfs.OpCreate, errorfs.OpLink, errorfs.OpFilePreallocate:
			if !creates {
				return nil
			}
		default:
			return nil
		}
		if strings.Contains(op.Path, part) {
			return errorfs.ErrInjected
		}
		return nil
	})}
}

// noPanic runs f and fails the test if it panics.
func noPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s panicked: %v", what, r)
		}
	}()
	f()
}

func TestFaultLogAppend(t *testing.T) {
	mem := vfs.NewCrashableMem()
	fault := faultOn("log", false)
	l, err := eventlog.Open("log", eventlog.Options{FS: errorfs.Wrap(mem, fault), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := l.Append(ctx, [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	fault.On()
	for i := range 3 {
		noPanic(t, "Append on a failing disk", func() {
			first, err := l.Append(ctx, [][]byte{[]byte("c")})
			if err == nil {
				t.Fatalf("append %d on a failing disk acknowledged at %d", i, first)
			}
		})
	}
	if l.End() != 2 {
		t.Errorf("End = %d after failed appends, want 2", l.End())
	}
	if !errors.Is(l.Failed(), featurestore.ErrStorage) {
		t.Errorf("Failed = %v, want ErrStorage", l.Failed())
	}
	// Power loss now: what was acknowledged is there, nothing else.
	crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	noPanic(t, "Close after a failed write", func() { _ = l.Close() })
	l, err = eventlog.Open("log", eventlog.Options{FS: crashed, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.End() != 2 {
		t.Errorf("after the crash: End = %d, want the 2 acknowledged records", l.End())
	}
}

func TestFaultApplyAndCheckpoint(t *testing.T) {
	mem := vfs.NewMem()
	fault := faultOn("store", false)
	fs := errorfs.Wrap(mem, fault)
	s, err := featurestore.Open("store", featurestore.Options{FS: fs, Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event", FlushWait: time.Second, Learner: testModels(t)})
	if err != nil {
		t.Fatal(err)
	}
	ev := func(off uint64) featurestore.Entry {
		return featurestore.Entry{Offset: off, Event: featurestore.Event{ID: fmt.Sprint("e", off), UserID: fmt.Sprint("u", off%97),
			ItemID: fmt.Sprint("i", off%1009), Behavior: featurestore.BehaviorView, TS: testNow.UnixMilli() + int64(off)}}
	}
	// batch is 500 entries from off: big enough that the WAL writes them
	// out (small unsynced batches wait in its buffer).
	batch := func(off uint64) (uint64, []featurestore.Entry) {
		var es []featurestore.Entry
		for i := range uint64(500) {
			es = append(es, ev(off+i))
		}
		return off + 500, es
	}
	if _, err := s.Apply(batch(0)); err != nil {
		t.Fatal(err)
	}
	// A checkpoint that fails half-way leaves no directory behind.
	ckFault := faultOn("ck", true)
	s2, err := featurestore.Open("store2", featurestore.Options{FS: errorfs.Wrap(mem, ckFault), Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event", Learner: testModels(t)})
	if err != nil {
		t.Fatal(err)
	}
	ckFault.On()
	noPanic(t, "Checkpoint on a failing disk", func() {
		if err := s2.Checkpoint("ck"); err == nil {
			t.Fatal("checkpoint on a failing disk succeeded")
		}
	})
	if _, err := mem.Stat("ck"); err == nil {
		t.Error("a failed checkpoint left its directory behind")
	}
	ckFault.Off()
	noPanic(t, "Close", func() { _ = s2.Close() })

	// The state has no WAL (the log is its durable copy): a failing disk
	// fails its flushes, which Apply does not wait for, and Flush, which
	// must say so; reads go on from memory, and once the disk works the
	// state is written out whole.
	fault.On()
	off := uint64(500)
	for range 10 {
		noPanic(t, "Apply on a failing disk", func() {
			end, es := batch(off)
			if _, err := s.Apply(end, es); err != nil {
				t.Errorf("apply (in memory) on a failing disk: %v", err)
			}
			off = end
		})
	}
	noPanic(t, "Flush on a failing disk", func() {
		if err := s.Flush(); err == nil {
			t.Error("flush on a failing disk succeeded")
		}
	})
	if u, ok, err := s.User("u1"); err != nil || !ok || u.Count[featurestore.BehaviorView] == 0 {
		t.Errorf("read on a failing disk: %+v %v %v", u, ok, err)
	}
	fault.Off()
	want, _, _ := s.User("u1")
	// Pebble retries the failed flush on its own schedule (backing off), so
	// on a loaded machine the next flush may take longer than one
	// FlushWait: wait for one to succeed, as an operator would retry.
	deadline := time.Now().Add(60 * time.Second)
	for err := s.Flush(); err != nil; err = s.Flush() {
		if time.Now().After(deadline) {
			t.Fatalf("flush once the disk works: still failing after 60 s: %v", err)
		}
	}
	noPanic(t, "Close once the disk works", func() {
		if err := s.Close(); err != nil {
			t.Errorf("close once the disk works: %v", err)
		}
	})
	s, err = featurestore.Open("store", featurestore.Options{FS: mem, Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event", Learner: testModels(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, _ := s.User("u1")
	if s.AppliedOffset() != off || got.Count != want.Count {
		t.Errorf("reopened: applied %d, counts %v; want %d, %v", s.AppliedOffset(), got.Count, off, want.Count)
	}
}

func TestFaultBackup(t *testing.T) {
	dir := t.TempDir()
	fault := faultOn(filepath.Join(dir, "backup", "log"), true)
	fs := errorfs.Wrap(vfs.Default, fault)
	l, err := eventlog.Open(filepath.Join(dir, "log"), eventlog.Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := featurestore.Open(filepath.Join(dir, "state"), featurestore.Options{FS: fs, Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event", Learner: testModels(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u := New(l, s, Options{Logger: quietLogger(), Now: func() time.Time { return testNow }})
	if _, err := u.Ingest(context.Background(), []*recsysv1.Event{mkEvent("", "u", "i", "", "view", testNow.UnixMilli())}, nil); err != nil {
		t.Fatal(err)
	}
	fault.On()
	bk := filepath.Join(dir, "backup")
	noPanic(t, "Backup on a failing disk", func() {
		if err := u.Backup(bk); err == nil {
			t.Fatal("backup on a failing disk succeeded")
		}
	})
	if _, err := os.Stat(bk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed backup left %s behind (%v)", bk, err)
	}
	fault.Off()
	if err := u.Backup(bk); err != nil {
		t.Fatalf("backup once the disk works again: %v", err)
	}
	for _, sub := range []string{"state", "log"} {
		if _, err := os.Stat(filepath.Join(bk, sub)); err != nil {
			t.Errorf("backup: %v", err)
		}
	}
}

func TestIngestRefusedOnFullDisk(t *testing.T) {
	free := uint64(10 << 20)
	e := openEnv(t, vfs.NewMem(), Options{MinFreeBytes: 64 << 20, DiskFree: func() (uint64, error) { return free, nil }})
	defer e.close()
	_, err := e.u.Ingest(context.Background(), []*recsysv1.Event{mkEvent("", "u", "i", "", "view", testNow.UnixMilli())}, nil)
	if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "10 MiB free") {
		t.Fatalf("Ingest on a full disk: %v, want ErrDiskFull with the figures", err)
	}
	if e.log.End() != 0 {
		t.Fatalf("a refused ingest was appended")
	}
	free = 100 << 20 // space returns
	if res := e.ingest(t, []*recsysv1.Event{mkEvent("", "u", "i", "", "view", testNow.UnixMilli())}, nil); res.Accepted != 1 {
		t.Fatalf("ingest after space returned: %+v", res)
	}
}
