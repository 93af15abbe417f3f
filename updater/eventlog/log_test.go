package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// checkGoroutines fails the test if, once every later-registered cleanup
// has run, more goroutines exist than at the call.
func checkGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d goroutines, %d before the test\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			runtime.Gosched() // yield, never sleep
		}
	})
}

func openLog(t testing.TB, fs vfs.FS, dir string, opts Options) *Log {
	t.Helper()
	opts.FS, opts.Logger = fs, quietLogger()
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func recs(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func mustAppend(t testing.TB, l *Log, ss ...string) uint64 {
	t.Helper()
	first, err := l.Append(t.Context(), recs(ss...))
	if err != nil {
		t.Fatalf("Append(%q): %v", ss, err)
	}
	return first
}

type rec struct {
	off uint64
	val string
}

func readAll(t testing.TB, l *Log, from uint64, max int) ([]rec, uint64) {
	t.Helper()
	var out []rec
	next, err := l.Read(from, max, func(off uint64, v []byte) error {
		out = append(out, rec{off, string(v)})
		return nil
	})
	if err != nil {
		t.Fatalf("Read(%d, %d): %v", from, max, err)
	}
	return out, next
}

func TestAppendRead(t *testing.T) {
	checkGoroutines(t)
	l := openLog(t, vfs.NewMem(), "log", Options{})
	if l.End() != 0 {
		t.Fatalf("End of a new log = %d", l.End())
	}
	if got, _ := readAll(t, l, 0, 10); len(got) != 0 {
		t.Fatalf("new log has records %v", got)
	}
	if first := mustAppend(t, l, "a", "b", "c"); first != 0 {
		t.Errorf("first append at %d, want 0", first)
	}
	if first := mustAppend(t, l, "d"); first != 3 {
		t.Errorf("second append at %d, want 3", first)
	}
	// An empty append adds nothing and reports End.
	if first := mustAppend(t, l); first != 4 || l.End() != 4 {
		t.Errorf("empty append = %d, End %d; want 4, 4", first, l.End())
	}
	// Empty and binary records are kept as they are.
	if first := mustAppend(t, l, "", "\x00\xff"); first != 4 {
		t.Errorf("third append at %d, want 4", first)
	}
	want := []rec{{0, "a"}, {1, "b"}, {2, "c"}, {3, "d"}, {4, ""}, {5, "\x00\xff"}}
	got, next := readAll(t, l, 0, 100)
	if !slices.Equal(got, want) || next != 6 {
		t.Errorf("Read(0, 100) = %v, next %d; want %v, 6", got, next, want)
	}

	tests := []struct {
		from uint64
		max  int
		want []rec
		next uint64
	}{
		{0, 2, want[:2], 2},
		{2, 3, want[2:5], 5},
		{4, 2, want[4:], 6},
		{5, 100, want[5:], 6},
		{3, 0, nil, 3},
		{6, 10, nil, 6},
		{100, 10, nil, 100},
	}
	for _, tc := range tests {
		got, next := readAll(t, l, tc.from, tc.max)
		if !slices.Equal(got, tc.want) || next != tc.next {
			t.Errorf("Read(%d, %d) = %v, next %d; want %v, %d", tc.from, tc.max, got, next, tc.want, tc.next)
		}
	}

	// fn's error stops the read at the failing record.
	stop := errors.New("stop")
	next, err := l.Read(1, 10, func(off uint64, _ []byte) error {
		if off == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || next != 3 {
		t.Errorf("Read with failing fn = %d, %v; want 3, stop", next, err)
	}
}

func TestReadValueOnlyValidDuringCall(t *testing.T) {
	// The doc says the slice is valid only during the call; copying it is
	// enough to keep it. This guards the contract from the caller's side.
	l := openLog(t, vfs.NewMem(), "log", Options{})
	mustAppend(t, l, "one", "two")
	var kept [][]byte
	if _, err := l.Read(0, 10, func(_ uint64, v []byte) error {
		kept = append(kept, slices.Clone(v))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if string(kept[0]) != "one" || string(kept[1]) != "two" {
		t.Errorf("copies = %q", kept)
	}
}

func TestConcurrentAppends(t *testing.T) {
	checkGoroutines(t)
	for _, opts := range []Options{{}, {MaxGroupBytes: 1}} {
		t.Run(fmt.Sprint("MaxGroupBytes=", opts.MaxGroupBytes), func(t *testing.T) {
			l := openLog(t, vfs.NewMem(), "log", opts)
			const writers, appends = 32, 40
			type result struct {
				first uint64
				recs  []string
			}
			results := make(chan result, writers*appends)
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					for a := range appends {
						n := 1 + (w+a)%4
						var ss []string
						for i := range n {
							ss = append(ss, fmt.Sprintf("w%d-a%d-r%d", w, a, i))
						}
						first, err := l.Append(context.Background(), recs(ss...))
						if err != nil {
							t.Errorf("Append: %v", err)
							return
						}
						results <- result{first, ss}
					}
				})
			}
			wg.Wait()
			close(results)

			want := make(map[uint64]string)
			for r := range results {
				for i, s := range r.recs {
					off := r.first + uint64(i)
					if prev, dup := want[off]; dup {
						t.Fatalf("offset %d assigned to both %q and %q", off, prev, s)
					}
					want[off] = s
				}
			}
			end := l.End()
			if int(end) != len(want) {
				t.Fatalf("End = %d, want %d records", end, len(want))
			}
			for off := range end {
				if _, ok := want[off]; !ok {
					t.Fatalf("offset %d not assigned: offsets are not dense", off)
				}
			}
			seen := make(map[string]bool)
			next, err := l.Read(0, int(end)+10, func(off uint64, v []byte) error {
				if want[off] != string(v) {
					t.Errorf("offset %d = %q, want %q", off, v, want[off])
				}
				if seen[string(v)] {
					t.Errorf("record %q read twice", v)
				}
				seen[string(v)] = true
				return nil
			})
			if err != nil || next != end || len(seen) != len(want) {
				t.Errorf("Read = %d, %v, %d records; want %d, nil, %d", next, err, len(seen), end, len(want))
			}
		})
	}
}

// Readers tailing the log while it grows see a dense prefix every time.
func TestConcurrentReadWhileAppending(t *testing.T) {
	l := openLog(t, vfs.NewMem(), "log", Options{})
	const total = 2000
	ctx := t.Context()
	done := make(chan error, 1)
	go func() {
		var next uint64
		for next < total {
			if err := l.Wait(ctx, next); err != nil {
				done <- err
				return
			}
			var err error
			next, err = l.Read(next, 37, func(off uint64, v []byte) error {
				if want := fmt.Sprint("r", off); string(v) != want {
					return fmt.Errorf("offset %d = %q, want %q", off, v, want)
				}
				return nil
			})
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < total; i += 10 {
		var ss []string
		for j := i; j < i+10; j++ {
			ss = append(ss, fmt.Sprint("r", j))
		}
		if first := mustAppend(t, l, ss...); first != uint64(i) {
			t.Fatalf("append at %d, want %d", first, i)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWait(t *testing.T) {
	checkGoroutines(t)
	l := openLog(t, vfs.NewMem(), "log", Options{})

	t.Run("unblocks on append", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() { errc <- l.Wait(t.Context(), 0) }()
		mustAppend(t, l, "a")
		if err := <-errc; err != nil {
			t.Fatalf("Wait = %v", err)
		}
		// Waiting for an offset below End returns at once.
		if err := l.Wait(t.Context(), 0); err != nil {
			t.Fatalf("Wait(0) with End 1 = %v", err)
		}
	})
	t.Run("waits for the requested offset", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() { errc <- l.Wait(t.Context(), 3) }()
		mustAppend(t, l, "b") // End 2: not enough
		select {
		case err := <-errc:
			t.Fatalf("Wait(3) returned %v with End %d", err, l.End())
		default:
		}
		mustAppend(t, l, "c", "d") // End 4
		if err := <-errc; err != nil || l.End() <= 3 {
			t.Fatalf("Wait(3) = %v with End %d", err, l.End())
		}
	})
	t.Run("ctx cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- l.Wait(ctx, 100) }()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
		}
		// An already expired context.
		ctx, cancel = context.WithDeadline(t.Context(), time.Unix(0, 0))
		defer cancel()
		if err := l.Wait(ctx, 100); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait with expired ctx = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		l := openLog(t, vfs.NewMem(), "log2", Options{})
		errc := make(chan error, 1)
		go func() { errc <- l.Wait(t.Context(), 0) }()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait across Close = %v, want ErrClosed", err)
		}
		if err := l.Wait(t.Context(), 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait after Close = %v, want ErrClosed", err)
		}
	})
}

func TestReopen(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	l, err := Open("log", Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, "a", "b")
	mustAppend(t, l, "c")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, fs, "log", Options{})
	if l.End() != 3 {
		t.Fatalf("End after reopen = %d, want 3", l.End())
	}
	if first := mustAppend(t, l, "d"); first != 3 {
		t.Fatalf("append after reopen at %d, want 3", first)
	}
	got, next := readAll(t, l, 0, 10)
	want := []rec{{0, "a"}, {1, "b"}, {2, "c"}, {3, "d"}}
	if !slices.Equal(got, want) || next != 4 {
		t.Fatalf("Read after reopen = %v, %d; want %v, 4", got, next, want)
	}
}

// Acknowledged appends are synced: a crash that loses every unsynced write
// keeps them.
func TestAppendIsDurable(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewCrashableMem()
	l := openLog(t, fs, "log", Options{})
	for i := range 20 {
		mustAppend(t, l, fmt.Sprint("r", i))
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	l2 := openLog(t, crashed, "log", Options{})
	if l2.End() != 20 {
		t.Fatalf("End after crash = %d, want 20", l2.End())
	}
	got, _ := readAll(t, l2, 0, 100)
	for i, r := range got {
		if r.val != fmt.Sprint("r", i) {
			t.Fatalf("record %d after crash = %q", i, r.val)
		}
	}
}

func TestClose(t *testing.T) {
	checkGoroutines(t)
	l, err := Open("log", Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, "a")
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Append races a full request queue against the closed quit channel;
	// repeat so that both select cases get picked.
	for range 100 {
		if _, err := l.Append(t.Context(), recs("x")); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close = %v, want ErrClosed", err)
		}
	}
	if l.End() != 1 {
		t.Errorf("End after Close = %d, want 1", l.End())
	}
	// Empty appends do not touch the writer.
	if first, err := l.Append(t.Context(), nil); err != nil || first != 1 {
		t.Errorf("empty Append after Close = %d, %v", first, err)
	}
}

func TestCloseWithConcurrentAppends(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	l, err := Open("log", Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := make(map[string]uint64)
	start := make(chan struct{})
	for w := range 16 {
		wg.Go(func() {
			<-start
			for i := 0; ; i++ {
				s := fmt.Sprintf("w%d-%d", w, i)
				off, err := l.Append(context.Background(), recs(s))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				acked[s] = off
				mu.Unlock()
			}
		})
	}
	close(start)
	mustAppend(t, l, "marker")
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait() // every Append returns once the log is closed
	// Every acknowledged record is in the log at its offset.
	l = openLog(t, fs, "log", Options{})
	got, _ := readAll(t, l, 0, int(l.End()))
	for s, off := range acked {
		if off >= uint64(len(got)) || got[off].val != s {
			t.Errorf("acknowledged record %q at %d missing after reopen", s, off)
		}
	}
}

func TestAppendCanceledContext(t *testing.T) {
	l := openLog(t, vfs.NewMem(), "log", Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 50 {
		// The records may or may not be appended; either way the call
		// returns and reports the cancellation or success.
		if _, err := l.Append(ctx, recs("x")); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Append with canceled ctx = %v", err)
		}
	}
	// Requests queued before the cancellation may still be committed: one
	// more append, queued after them, returns once they are all done.
	mustAppend(t, l, "last")
	// Whatever was appended is dense and readable.
	got, next := readAll(t, l, 0, 1000)
	if uint64(len(got)) != l.End() || next != l.End() {
		t.Fatalf("read %d records up to %d, End %d", len(got), next, l.End())
	}
}

// Read on a closed log returns ErrClosed: callers such as the updater's
// Run can reach Read after a concurrent Close.
func TestReadAfterClose(t *testing.T) {
	l, err := Open("log", Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, "a")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Read after Close panicked: %v", r)
		}
	}()
	if _, err := l.Read(0, 10, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close = %v, want ErrClosed", err)
	}
}

// BenchmarkAppend appends one 200-byte record per call from parallel
// goroutines, so group commit gathers them.
func BenchmarkAppend(b *testing.B) {
	l, err := Open("log", Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rec := [][]byte{make([]byte, 200)}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Append(context.Background(), rec); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAppendBatch appends 256 records of 200 bytes per call.
func BenchmarkAppendBatch(b *testing.B) {
	l, err := Open("log", Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	batch := make([][]byte, 256)
	for i := range batch {
		batch[i] = make([]byte, 200)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Append(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(l.End())/b.Elapsed().Seconds(), "records/s")
}

// A truncated prefix is gone; later offsets and End are unchanged, also
// after reopening.
func TestTruncateBefore(t *testing.T) {
	fs := vfs.NewMem()
	l, err := Open("log", Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, "a", "b", "c", "d", "e")
	if err := l.TruncateBefore(3); err != nil {
		t.Fatal(err)
	}
	check := func(l *Log) {
		t.Helper()
		var got []uint64
		next, err := l.Read(0, 100, func(off uint64, _ []byte) error { got = append(got, off); return nil })
		if err != nil || next != 5 || !slices.Equal(got, []uint64{3, 4}) || l.End() != 5 {
			t.Fatalf("after truncation: read %v next %d err %v end %d; want [3 4] 5 nil 5", got, next, err, l.End())
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = Open("log", Options{FS: fs, Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	check(l)
	if first := mustAppend(t, l, "f"); first != 5 {
		t.Fatalf("append after truncation got offset %d, want 5", first)
	}
	// Truncating everything keeps the last record, so End survives a reopen.
	if err := l.TruncateBefore(100); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = Open("log", Options{FS: fs, Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.End() != 6 {
		t.Fatalf("End after truncating everything and reopening = %d, want 6", l.End())
	}
}

// Enqueued appends take offsets in the order they were enqueued, and the
// largest mark is durable with them.
func TestEnqueueOrderAndMark(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	l, err := Open("log", Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var ps []*Pending
	for i, mark := range []int64{5, 9, 7} {
		p, err := l.Enqueue(t.Context(), recs(fmt.Sprint(i)), mark)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for i := len(ps) - 1; i >= 0; i-- {
		if first, err := ps[i].Wait(t.Context()); err != nil || first != uint64(i) {
			t.Errorf("append %d at %d, %v; want %d", i, first, err, i)
		}
	}
	if m := l.Mark(); m != 9 {
		t.Errorf("Mark = %d, want 9", m)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, fs, "log", Options{})
	if m := l.Mark(); m != 9 {
		t.Errorf("Mark after reopen = %d, want 9", m)
	}
}
