package updater

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater/eventlog"
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

// env is a log, a store and an updater on one in-memory filesystem.
type env struct {
	fs    vfs.FS
	log   *eventlog.Log
	store *featurestore.Store
	u     *Updater
	opts  Options
}

func openEnv(t testing.TB, fs vfs.FS, opts Options) *env {
	t.Helper()
	l, err := eventlog.Open("log", eventlog.Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := featurestore.Open("store", featurestore.Options{FS: fs, Logger: quietLogger(), CacheBytes: 4 << 20, Clock: "event", Learner: testModels(t)})
	if err != nil {
		_ = l.Close()
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.Now == nil {
		opts.Now = func() time.Time { return testNow }
	}
	e := &env{fs: fs, log: l, store: s, u: New(l, s, opts), opts: opts}
	t.Cleanup(e.close)
	return e
}

// close closes the log first, so that a running updater stops, then the store.
func (e *env) close() {
	_ = e.log.Close()
	_ = e.store.Close()
}

// run starts the updater and returns a function that cancels it and checks
// that Run returned nil.
func (e *env) run(t testing.TB) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- e.u.Run(ctx) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) waitApplied(t testing.TB, off uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.u.WaitApplied(ctx, off); err != nil {
		t.Fatalf("WaitApplied(%d): %v (applied %d)", off, err, e.store.AppliedOffset())
	}
}

func (e *env) ingest(t testing.TB, events []*recsysv1.Event, index []int) IngestResult {
	t.Helper()
	res, err := e.u.Ingest(context.Background(), events, index)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	return res
}

func mkEvent(id, user, item, cat, behavior string, ts int64) *recsysv1.Event {
	return &recsysv1.Event{EventId: id, UserId: user, ItemId: item, CategoryId: cat, Behavior: behavior, Ts: ts}
}

func userCounts(t testing.TB, s *featurestore.Store, user string) []int64 {
	t.Helper()
	u, ok, err := s.User(user)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return nil
	}
	return u.Count[:]
}

func TestIngestAndRun(t *testing.T) {
	checkGoroutines(t)
	e := openEnv(t, vfs.NewMem(), Options{})
	e.run(t)
	res := e.ingest(t, []*recsysv1.Event{
		mkEvent("", "u1", "i1", "c1", "view", testTS),
		mkEvent("", "u1", "i2", "c1", "pv", testTS+1),
		mkEvent("", "u1", "i1", "c1", "buy", testTS+2),
		mkEvent("e4", "u2", "i1", "", "cart", testTS+3),
	}, nil)
	if res.Accepted != 4 || len(res.Rejected) != 0 || res.End != 4 {
		t.Fatalf("Ingest = %+v", res)
	}
	if e.u.LogEnd() != 4 {
		t.Errorf("LogEnd = %d", e.u.LogEnd())
	}
	e.waitApplied(t, res.End)
	if got := userCounts(t, e.store, "u1"); !slices.Equal(got, []int64{2, 0, 0, 1}) {
		t.Errorf("u1 counts = %v, want [2 0 0 1]", got)
	}
	if got := userCounts(t, e.store, "u2"); !slices.Equal(got, []int64{0, 1, 0, 0}) {
		t.Errorf("u2 counts = %v, want [0 1 0 0]", got)
	}
	if ok, _ := e.store.Purchased("u1", "i1"); !ok {
		t.Errorf("purchase not recorded")
	}
	if st := e.store.Stats(); st.Events != 4 || st.AppliedOffset != 4 || st.Users != 2 || st.Items != 2 {
		t.Errorf("Stats = %+v", st)
	}
	// More events while running.
	res = e.ingest(t, []*recsysv1.Event{mkEvent("", "u3", "i3", "c3", "fav", testTS)}, nil)
	e.waitApplied(t, res.End)
	if got := userCounts(t, e.store, "u3"); !slices.Equal(got, []int64{0, 0, 1, 0}) {
		t.Errorf("u3 counts = %v", got)
	}
	// WaitApplied for an offset already applied returns at once.
	e.waitApplied(t, 0)
	e.waitApplied(t, res.End)
}

func TestIngestTwiceCountedOnce(t *testing.T) {
	e := openEnv(t, vfs.NewMem(), Options{})
	e.run(t)
	batch := []*recsysv1.Event{
		mkEvent("", "u", "i1", "c", "view", testTS),
		mkEvent("", "u", "i2", "c", "cart", testTS),
		mkEvent("given", "u", "i3", "c", "fav", testTS),
	}
	first := e.ingest(t, batch, nil)
	second := e.ingest(t, batch, nil)
	if first.Accepted != 3 || second.Accepted != 3 || second.End != 6 {
		t.Fatalf("ingests = %+v, %+v", first, second)
	}
	// An alias of an event is the same event.
	alias := proto.Clone(batch[0]).(*recsysv1.Event)
	alias.Behavior = "pv"
	third := e.ingest(t, []*recsysv1.Event{alias, alias}, nil)
	e.waitApplied(t, third.End)
	if got := userCounts(t, e.store, "u"); !slices.Equal(got, []int64{1, 1, 1, 0}) {
		t.Errorf("counts = %v, want [1 1 1 0]", got)
	}
	if st := e.store.Stats(); st.Events != 3 || st.Duplicates != 5 || st.AppliedOffset != 8 {
		t.Errorf("Stats = %+v, want 3 events, 5 duplicates, offset 8", st)
	}
}

func TestIngestRejections(t *testing.T) {
	e := openEnv(t, vfs.NewMem(), Options{})
	events := []*recsysv1.Event{
		mkEvent("", "u", "i", "c", "view", testTS),
		mkEvent("", "", "i", "c", "view", testTS),
		mkEvent("", "u", "i2", "c", "cart", testTS),
		mkEvent("", "u", "i", "c", "click", testTS),
		mkEvent("", "u", "i", "c", "view", testNow.Add(time.Hour).UnixMilli()),
		nil,
	}
	type rej struct {
		index       int32
		field, code string
	}
	rejs := func(res IngestResult) []rej {
		var out []rej
		for _, r := range res.Rejected {
			out = append(out, rej{r.Index, r.Field, r.Code})
			if r.Reason == "" {
				t.Errorf("rejection %v has no reason", r)
			}
		}
		return out
	}

	res := e.ingest(t, events, []int{2, 5, 7, 9, 11, 13})
	want := []rej{{5, "user_id", CodeMissing}, {9, "behavior", CodeUnknownBehavior}, {11, "ts", CodeFuture}, {13, "event", CodeMissing}}
	// The future event is a dead letter, in the log after the two events.
	if got := rejs(res); !slices.Equal(got, want) || res.Accepted != 2 || res.End != 3 {
		t.Errorf("Ingest with index = %+v, rejections %v; want 2 accepted, %v", res, got, want)
	}

	// nil index: positions in the slice.
	res = e.ingest(t, events, nil)
	want = []rej{{1, "user_id", CodeMissing}, {3, "behavior", CodeUnknownBehavior}, {4, "ts", CodeFuture}, {5, "event", CodeMissing}}
	if got := rejs(res); !slices.Equal(got, want) || res.Accepted != 2 || res.End != 6 {
		t.Errorf("Ingest without index = %+v, rejections %v; want 2 accepted, %v", res, got, want)
	}

	// All rejected (none late or future): nothing appended, End is the log end.
	res = e.ingest(t, events[1:2], []int{0})
	if res.Accepted != 0 || len(res.Rejected) != 1 || res.End != 6 || e.log.End() != 6 {
		t.Errorf("all-rejected Ingest = %+v, log end %d", res, e.log.End())
	}
	// Nothing at all.
	if res = e.ingest(t, nil, nil); res.Accepted != 0 || res.Rejected != nil || res.End != 6 {
		t.Errorf("empty Ingest = %+v", res)
	}

	// The request decoder's index slice plugs straight in.
	body := `{"events":[{"user_id":"u","item_id":"i","behavior":"view","ts":` + fmt.Sprint(testTS) +
		`},7,{"user_id":"u","behavior":"view","ts":1},{"user_id":"v","item_id":"j","behavior":"buy","ts":` + fmt.Sprint(testTS) + `}]}`
	decoded, index, rejected, err := DecodeIngestRequest([]byte(body), 10)
	if err != nil {
		t.Fatal(err)
	}
	res = e.ingest(t, decoded, index)
	all := append(rejected, res.Rejected...)
	var got []rej
	for _, r := range all {
		got = append(got, rej{r.Index, r.Field, r.Code})
	}
	if want := []rej{{1, "event", CodeMalformed}, {2, "item_id", CodeMissing}}; !slices.Equal(got, want) || res.Accepted != 2 {
		t.Errorf("decoded request: accepted %d, rejections %v; want 2, %v", res.Accepted, got, want)
	}
}

func TestIngestClosedLog(t *testing.T) {
	e := openEnv(t, vfs.NewMem(), Options{})
	e.log.Close()
	_, err := e.u.Ingest(context.Background(), []*recsysv1.Event{validEvent()}, nil)
	if !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Ingest on a closed log = %v, want ErrClosed", err)
	}
}

func TestRunStops(t *testing.T) {
	checkGoroutines(t)
	e := openEnv(t, vfs.NewMem(), Options{})

	t.Run("ctx cancel while idle", func(t *testing.T) {
		stop := e.run(t)
		stop()
	})
	t.Run("ctx already canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := e.u.Run(ctx); err != nil {
			t.Errorf("Run with canceled ctx = %v", err)
		}
	})
	t.Run("ctx cancel after work", func(t *testing.T) {
		stop := e.run(t)
		res := e.ingest(t, []*recsysv1.Event{validEvent()}, nil)
		e.waitApplied(t, res.End)
		stop()
	})
	t.Run("WaitApplied honors ctx", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- e.u.WaitApplied(ctx, 1000) }()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("WaitApplied after cancel = %v", err)
		}
	})
	t.Run("log closed", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- e.u.Run(ctx) }()
		e.log.Close()
		if err := <-errc; err != nil {
			t.Errorf("Run after the log closed = %v, want nil", err)
		}
	})
}

// A log record that does not decode, or does not validate, is skipped.
func TestRunSkipsBadRecords(t *testing.T) {
	e := openEnv(t, vfs.NewMem(), Options{})
	bad, err := proto.Marshal(mkEvent("", "", "i", "", "view", testTS)) // no user
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.Append(context.Background(), [][]byte{{0xff, 0xff, 0xff}, bad}); err != nil {
		t.Fatal(err)
	}
	e.run(t)
	res := e.ingest(t, []*recsysv1.Event{validEvent()}, nil)
	e.waitApplied(t, res.End)
	if st := e.store.Stats(); st.Events != 1 || st.AppliedOffset != 3 {
		t.Errorf("Stats = %+v, want 1 event applied up to offset 3", st)
	}
}

// genEvents makes n distinct valid events over a few users and items.
func genEvents(rng *rand.Rand, n int, prefix string) []*recsysv1.Event {
	behaviors := []string{"view", "pv", "cart", "fav", "purchase", "buy"}
	out := make([]*recsysv1.Event, n)
	for i := range out {
		id := ""
		if rng.IntN(2) == 0 {
			id = fmt.Sprint(prefix, i)
		}
		out[i] = mkEvent(id, fmt.Sprint("u", rng.IntN(7)), fmt.Sprint("i", rng.IntN(30)), fmt.Sprint("c", rng.IntN(4)),
			behaviors[rng.IntN(len(behaviors))], testTS-int64(i)*1000-int64(rng.IntN(1000)))
	}
	return out
}

// expectCounts is the brute-force per-user count of distinct events.
func expectCounts(t testing.TB, events []*recsysv1.Event) map[string][]int64 {
	t.Helper()
	seen := make(map[string]bool)
	out := make(map[string][]int64)
	for _, ev := range events {
		norm, ferr := Normalize(ev, testNow, testSkew)
		if ferr != nil {
			t.Fatal(ferr)
		}
		if seen[norm.ID] {
			continue
		}
		seen[norm.ID] = true
		if out[norm.UserID] == nil {
			out[norm.UserID] = make([]int64, 4)
		}
		out[norm.UserID][norm.Behavior]++
	}
	return out
}

func checkCounts(t testing.TB, s *featurestore.Store, want map[string][]int64) {
	t.Helper()
	var events int64
	for user, w := range want {
		if got := userCounts(t, s, user); !slices.Equal(got, w) {
			t.Errorf("user %s counts = %v, want %v", user, got, w)
		}
		for _, n := range w {
			events += n
		}
	}
	if st := s.Stats(); st.Events != events || st.Users != int64(len(want)) {
		t.Errorf("Stats = %+v, want %d events over %d users", st, events, len(want))
	}
}

// Events acknowledged by Ingest but never applied (the process died before
// the updater ran) are applied exactly once after a restart.
func TestRestartBeforeApply(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	events := genEvents(rand.New(rand.NewPCG(1, 1)), 300, "a")
	e := openEnv(t, fs, Options{})
	res := e.ingest(t, events, nil)
	e.close()

	e = openEnv(t, fs, Options{ApplyBatch: 64})
	if e.store.AppliedOffset() != 0 || e.log.End() != res.End {
		t.Fatalf("after restart: applied %d, log end %d (want 0, %d)", e.store.AppliedOffset(), e.log.End(), res.End)
	}
	e.run(t)
	e.waitApplied(t, res.End)
	checkCounts(t, e.store, expectCounts(t, events))
	if st := e.store.Stats(); st.Duplicates != 0 || st.AppliedOffset != res.End {
		t.Errorf("Stats = %+v", st)
	}
}

// Stopping the updater part-way and restarting it applies every event
// exactly once, also when clients resend events across the restart.
func TestStopMidwayAndRestart(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	rng := rand.New(rand.NewPCG(2, 2))
	events := genEvents(rng, 2000, "b")

	e := openEnv(t, fs, Options{ApplyBatch: 7})
	stop := e.run(t)
	var end uint64
	for chunk := range slices.Chunk(events, 100) {
		end = e.ingest(t, chunk, nil).End
	}
	e.waitApplied(t, end/3)
	stop()
	mid := e.store.AppliedOffset()
	if mid < end/3 {
		t.Fatalf("applied %d < %d", mid, end/3)
	}
	e.close()

	e = openEnv(t, fs, Options{ApplyBatch: 50})
	if e.store.AppliedOffset() != mid {
		t.Fatalf("applied offset after restart = %d, want %d", e.store.AppliedOffset(), mid)
	}
	e.run(t)
	// A client resends part of the stream after the restart.
	resent := events[:300]
	res := e.ingest(t, resent, nil)
	e.waitApplied(t, res.End)
	checkCounts(t, e.store, expectCounts(t, events))
	if st := e.store.Stats(); st.Duplicates != int64(len(resent)) || st.AppliedOffset != res.End {
		t.Errorf("Stats = %+v, want %d duplicates, offset %d", st, len(resent), res.End)
	}
}

// A crash loses the store's unsynced writes (Apply commits without fsync)
// but never an acknowledged log record: after the crash the updater re-applies
// from wherever the store's state fell back to, exactly once.
func TestCrashLosesUnsyncedState(t *testing.T) {
	checkGoroutines(t)
	for _, pct := range []int{0, 50, 100} {
		t.Run(fmt.Sprintf("unsynced%d%%", pct), func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			rng := rand.New(rand.NewPCG(3, uint64(pct)))
			events := genEvents(rng, 1500, "c")
			e := openEnv(t, mem, Options{ApplyBatch: 100})
			stop := e.run(t)
			var end uint64
			for chunk := range slices.Chunk(events, 250) {
				end = e.ingest(t, chunk, nil).End
			}
			e.waitApplied(t, end)
			stop()

			cfg := vfs.CrashCloneCfg{UnsyncedDataPercent: pct}
			if pct > 0 {
				cfg.RNG = rand.New(rand.NewPCG(4, 4))
			}
			crashed := mem.CrashClone(cfg)
			e.close()

			e = openEnv(t, crashed, Options{ApplyBatch: 100})
			if e.log.End() != end {
				t.Fatalf("log end after crash = %d, want %d (acknowledged appends lost)", e.log.End(), end)
			}
			t.Logf("store applied offset after crash: %d of %d", e.store.AppliedOffset(), end)
			e.run(t)
			e.waitApplied(t, end)
			checkCounts(t, e.store, expectCounts(t, events))
			if st := e.store.Stats(); st.Duplicates != 0 {
				t.Errorf("Stats = %+v, want no duplicates", st)
			}
		})
	}
}

// Concurrent ingests from many clients while the updater runs.
func TestConcurrentIngest(t *testing.T) {
	checkGoroutines(t)
	e := openEnv(t, vfs.NewMem(), Options{ApplyBatch: 33})
	e.run(t)
	const clients = 8
	all := make([][]*recsysv1.Event, clients)
	errc := make(chan error, clients)
	for c := range clients {
		all[c] = genEvents(rand.New(rand.NewPCG(5, uint64(c))), 200, fmt.Sprint("k", c, "-"))
		go func() {
			for chunk := range slices.Chunk(all[c], 17) {
				if _, err := e.u.Ingest(context.Background(), chunk, nil); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range clients {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	e.waitApplied(t, e.log.End())
	checkCounts(t, e.store, expectCounts(t, slices.Concat(all...)))
}

// Dead letters (late and future events) go through the log like events:
// acknowledged with them, durable across a crash that loses every unsynced
// write of the state, applied once however often the log is re-read, and
// rebuilt with the state from the log.
func TestDeadLettersGoThroughTheLog(t *testing.T) {
	checkGoroutines(t)
	mem := vfs.NewCrashableMem()
	e := openEnv(t, mem, Options{ApplyBatch: 3, AllowedLateness: time.Hour})
	base := testNow.Add(-48 * time.Hour).UnixMilli()
	res := e.ingest(t, []*recsysv1.Event{
		mkEvent("", "u1", "i1", "c1", "view", base+3*3_600_000),
		mkEvent("", "u1", "i2", "c1", "view", base),                               // late
		mkEvent("", "u2", "i1", "c1", "view", testNow.Add(time.Hour).UnixMilli()), // future
		mkEvent("", "u2", "i3", "c1", "cart", base+3*3_600_000+1),
	}, nil)
	if res.Accepted != 2 || len(res.Rejected) != 2 || res.End != 4 {
		t.Fatalf("Ingest = %+v, want 2 accepted, 2 rejected, 4 log records", res)
	}
	if n := e.store.DeadLetterCount(); n != 0 {
		t.Fatalf("dead letters before the updater ran: %d, want 0 (they are applied from the log)", n)
	}
	// A crash before anything is applied or the state synced: the log has
	// the dead letters, the state nothing.
	crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	e.close()
	e = openEnv(t, crashed, Options{ApplyBatch: 3, AllowedLateness: time.Hour})
	if e.log.End() != 4 || e.store.AppliedOffset() != 0 {
		t.Fatalf("after the crash: log end %d, applied %d; want 4 and 0", e.log.End(), e.store.AppliedOffset())
	}
	stop := e.run(t)
	e.waitApplied(t, 4)
	stop()
	check := func(what string) {
		t.Helper()
		if n := e.store.DeadLetterCount(); n != 2 {
			t.Fatalf("%s: %d dead letters, want 2", what, n)
		}
		recs, err := e.store.DeadLetters(10)
		if err != nil {
			t.Fatal(err)
		}
		codes := map[string]int{}
		for _, r := range recs {
			var dl recsysv1.DeadLetter
			if err := proto.Unmarshal(r, &dl); err != nil {
				t.Fatal(err)
			}
			codes[dl.Code]++
		}
		if len(recs) != 2 || codes[CodeLate] != 1 || codes[CodeFuture] != 1 {
			t.Errorf("%s: dead letters by code %v, want one late and one future", what, codes)
		}
		if st := e.store.Stats(); st.Events != 2 {
			t.Errorf("%s: %d events applied, want 2", what, st.Events)
		}
	}
	check("applied after the crash")
	// Re-applying the whole log (as after a lost state batch) counts nothing
	// twice.
	entries := []featurestore.Entry{}
	if _, err := e.store.ApplyLog(4, entries, []featurestore.DeadLetter{{Received: 1, Seq: featurestore.LogDeadLetterSeq(1), Record: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	check("a dead letter below the applied offset again")
	e.close()
}

// A server restarted every day still truncates its log: the marks that say
// which offset was applied when are kept in the log itself, not only in
// the memory of one run.
func TestLogTruncatedAcrossRestarts(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	opts := Options{AllowedLateness: 1000 * 24 * time.Hour}
	e := openEnv(t, fs, opts)
	retention := e.store.Retention()
	t1 := testNow.Add(-time.Hour).UnixMilli()
	t0 := t1 - retention - 2*24*3_600_000
	days := []int64{t0, t0 + 24*3_600_000, t1}
	var end uint64
	for i, ts := range days {
		// One run a day: ingest the day's event, apply it (the day's expiry
		// runs), stop.
		stop := e.run(t)
		end = e.ingest(t, []*recsysv1.Event{mkEvent("", "u1", fmt.Sprint("i", i), "", "view", ts)}, nil).End
		e.waitApplied(t, end)
		stop()
		e.close()
		e = openEnv(t, fs, opts)
	}
	defer e.close()
	var offs []uint64
	if _, err := e.log.Read(0, 10, func(off uint64, _ []byte) error { offs = append(offs, off); return nil }); err != nil {
		t.Fatal(err)
	}
	// The marks of the first two days (offsets 1 and 2 applied) are older
	// than the retention on the last day: everything before the newer of
	// them is gone. (Marks lost with each run would truncate nothing.)
	if !slices.Equal(offs, []uint64{2}) {
		t.Fatalf("log offsets after three daily runs: %v, want [2] (offsets 0 and 1 truncated)", offs)
	}
}

// The watermark survives a restart whose log tail is not applied yet: the
// log keeps the newest accepted event time with the records, so an event
// the first run would have refused as late is refused after it too (the
// store keeps derived ids only for the lateness).
func TestWatermarkAcrossRestart(t *testing.T) {
	checkGoroutines(t)
	early := testTS - 5*3600_000
	fs := vfs.NewMem()
	e := openEnv(t, fs, Options{})
	e.ingest(t, []*recsysv1.Event{mkEvent("", "u", "i", "c", "view", early), mkEvent("", "u", "j", "c", "view", testTS)}, nil)
	e.close()
	e = openEnv(t, fs, Options{})
	if e.store.AppliedOffset() != 0 || e.log.Mark() != testTS {
		t.Fatalf("after restart: applied %d, log mark %d; want 0, %d", e.store.AppliedOffset(), e.log.Mark(), testTS)
	}
	if maxTS, _ := e.u.Watermark(); maxTS != testTS {
		t.Errorf("newest event time after restart = %d, want %d", maxTS, testTS)
	}
	res := e.ingest(t, []*recsysv1.Event{mkEvent("", "u", "i", "c", "view", early)}, nil)
	if len(res.Rejected) != 1 || res.Rejected[0].Code != CodeLate {
		t.Errorf("resend 5h behind after restart = %+v, want rejected as late", res)
	}
}

// testModels returns the incremental models with their defaults, for a
// store that learns as the server's does.
func testModels(t testing.TB) *models.Models {
	t.Helper()
	m, err := models.New(models.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// publisher records what ingest publishes (Kafka mode).
type publisher struct {
	events []*recsysv1.Event
	dead   []*recsysv1.DeadLetter
}

func (p *publisher) Publish(_ context.Context, evs []*recsysv1.Event) error {
	p.events = append(p.events, evs...)
	return nil
}

func (p *publisher) PublishDeadLetters(_ context.Context, dead []*recsysv1.DeadLetter) error {
	p.dead = append(p.dead, dead...)
	return nil
}

// With a Publisher, ingest sends the valid events and the dead letters of
// future ones the same way (the consumer keeps both with the state);
// nothing goes to the log or straight to the store.
func TestIngestPublishesDeadLetters(t *testing.T) {
	checkGoroutines(t)
	var pub publisher
	e := openEnv(t, vfs.NewMem(), Options{Publisher: &pub})
	defer e.close()
	future := testNow.Add(time.Hour).UnixMilli()
	res := e.ingest(t, []*recsysv1.Event{mkEvent("", "u", "i", "c", "view", testTS), mkEvent("", "u", "j", "c", "view", future)}, nil)
	if res.Accepted != 1 || len(res.Rejected) != 1 || res.Rejected[0].Code != CodeFuture {
		t.Fatalf("ingest = %+v, want 1 accepted and 1 rejected as future", res)
	}
	if len(pub.events) != 1 || len(pub.dead) != 1 || pub.dead[0].Code != CodeFuture || pub.dead[0].GetEvent().GetItemId() != "j" {
		t.Fatalf("published %d events and dead letters %v, want 1 and the future one", len(pub.events), pub.dead)
	}
	if e.log.End() != 0 || e.store.DeadLetterCount() != 0 {
		t.Fatalf("log end %d, dead letters in the store %d; want 0 and 0 (the consumer keeps them)", e.log.End(), e.store.DeadLetterCount())
	}
}
