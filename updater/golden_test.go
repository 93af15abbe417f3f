package updater

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// TestUpdaterGolden ingests the batches of testdata/golden/events.txt
// through Updater.Ingest, applies them with Run and checks every line of
// testdata/golden/expected.txt (worked out by hand; the formats are
// described at the top of both files): the rejections of each batch, the
// dead letters, the store's counters and feature values read with
// Store.Get. It runs twice, once applying the whole log in one Apply after
// all batches are ingested and once applying each batch before the next is
// ingested: the results must not depend on how the log is cut into Applies.
func TestUpdaterGolden(t *testing.T) {
	in := readGoldenEvents(t, "testdata/golden/events.txt")
	exp := readGoldenExpected(t, "testdata/golden/expected.txt", in)
	for _, mode := range goldenModes {
		t.Run(mode, func(t *testing.T) { runGolden(t, mode, in, exp) })
	}
}

const (
	goldenAtEnd    = "apply_at_end"
	goldenPerBatch = "apply_per_batch"
)

var goldenModes = []string{goldenAtEnd, goldenPerBatch}

// goldenInput is events.txt.
type goldenInput struct {
	wallClock time.Time
	batches   [][]*recsysv1.Event // batch i+1 of the file
	lines     [][]int             // line of each event, for messages
}

// goldenRej is one rejection: the event's index in its batch, field, code.
type goldenRej struct {
	index       int32
	field, code string
}

// goldenLine is one expectation of expected.txt.
type goldenLine struct {
	n    int    // line number
	text string // the line without its bug tags
	kind string // reject, deadletters, deadletter, stats, value
	bugs []string

	// reject, deadletter
	batch int // 1-based
	rej   goldenRej
	// deadletter: 1 = newest; deadletters: the count
	k int
	// stats
	stats map[string]string
	// value
	entity, id, feature string
	asOf, now           int64 // now 0: the newest event time applied
	want                string
}

type goldenBug struct {
	mode, text string
}

type goldenExpected struct {
	lines []*goldenLine
	bugs  map[string]goldenBug
	// rejects[b] lists the rejections expected of batch b+1, by index.
	rejects [][]goldenRej
}

func parseGoldenTime(s string) (int64, error) {
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, err
	}
	if ts.Nanosecond()%int(time.Millisecond) != 0 {
		return 0, fmt.Errorf("%s: finer than a millisecond", s)
	}
	return ts.UnixMilli(), nil
}

func fmtGoldenTS(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }

// goldenFileLines calls fn with the number and text of every line of path
// that is neither blank nor a comment.
func goldenFileLines(t *testing.T, path string, fn func(n int, line string)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fn(n, line)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

func readGoldenEvents(t *testing.T, path string) *goldenInput {
	t.Helper()
	in := &goldenInput{}
	var cur []*recsysv1.Event
	var curLines []int
	sepLine := 0 // the last `--- batch` line
	flush := func(n int) {
		if len(cur) == 0 {
			t.Fatalf("%s:%d: empty batch", path, n)
		}
		in.batches = append(in.batches, cur)
		in.lines = append(in.lines, curLines)
		cur, curLines = nil, nil
	}
	goldenFileLines(t, path, func(n int, line string) {
		if line == "--- batch" {
			if len(cur) > 0 || sepLine != 0 { // not a leading separator
				flush(n)
			}
			sepLine = n
			return
		}
		f := strings.Fields(line)
		if f[0] == "wall-clock" {
			if len(f) != 2 || !in.wallClock.IsZero() {
				t.Fatalf("%s:%d: want one line `wall-clock TIME`", path, n)
			}
			ms, err := parseGoldenTime(f[1])
			if err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
			in.wallClock = time.UnixMilli(ms).UTC()
			return
		}
		if len(f) != 6 {
			t.Fatalf("%s:%d: want `event_id user item category behavior time`, got %q", path, n, line)
		}
		ts, err := parseGoldenTime(f[5])
		if err != nil {
			t.Fatalf("%s:%d: %v", path, n, err)
		}
		dash := func(s string) string {
			if s == "-" {
				return ""
			}
			return s
		}
		cur = append(cur, &recsysv1.Event{EventId: dash(f[0]), UserId: f[1], ItemId: f[2], CategoryId: dash(f[3]), Behavior: f[4], Ts: ts})
		curLines = append(curLines, n)
	})
	flush(sepLine)
	if in.wallClock.IsZero() {
		t.Fatalf("%s: no wall-clock line", path)
	}
	if len(in.batches) < 3 {
		t.Fatalf("%s: only %d batches", path, len(in.batches))
	}
	return in
}

// goldenKV splits key=value.
func goldenKV(t *testing.T, path string, n int, field, key string) string {
	t.Helper()
	v, ok := strings.CutPrefix(field, key+"=")
	if !ok {
		t.Fatalf("%s:%d: want %s=..., got %q", path, n, key, field)
	}
	return v
}

func goldenInt(t *testing.T, path string, n int, s string) int {
	t.Helper()
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s:%d: %v", path, n, err)
	}
	return v
}

func readGoldenExpected(t *testing.T, path string, in *goldenInput) *goldenExpected {
	t.Helper()
	exp := &goldenExpected{bugs: map[string]goldenBug{}, rejects: make([][]goldenRej, len(in.batches))}
	checkEvent := func(n, batch int, index int32) {
		if batch < 1 || batch > len(in.batches) || index < 0 || int(index) >= len(in.batches[batch-1]) {
			t.Fatalf("%s:%d: no event %d in batch %d", path, n, index, batch)
		}
	}
	goldenFileLines(t, path, func(n int, line string) {
		f := strings.Fields(line)
		if f[0] == "bug" {
			name, mode, text := "", "", ""
			if len(f) >= 4 {
				name = f[1]
				mode, _ = strings.CutPrefix(f[2], "mode=")
				mode, _ = strings.CutSuffix(mode, ":")
				_, text, _ = strings.Cut(line, ": ")
			}
			if name == "" || !slices.Contains(goldenModes, mode) || text == "" {
				t.Fatalf("%s:%d: want `bug NAME mode=%s: DESCRIPTION`", path, n, strings.Join(goldenModes, "|"))
			}
			exp.bugs[name] = goldenBug{mode: mode, text: text}
			return
		}
		g := &goldenLine{n: n}
		for len(f) > 0 && strings.HasPrefix(f[len(f)-1], "!") {
			g.bugs = append(g.bugs, f[len(f)-1][1:])
			f = f[:len(f)-1]
		}
		g.text = strings.Join(f, " ")
		switch f[0] {
		case "reject":
			if len(f) != 5 {
				t.Fatalf("%s:%d: want `reject batch=B index=I field=F code=C`", path, n)
			}
			g.kind = "reject"
			g.batch = goldenInt(t, path, n, goldenKV(t, path, n, f[1], "batch"))
			g.rej = goldenRej{int32(goldenInt(t, path, n, goldenKV(t, path, n, f[2], "index"))), goldenKV(t, path, n, f[3], "field"), goldenKV(t, path, n, f[4], "code")}
			checkEvent(n, g.batch, g.rej.index)
			for _, r := range exp.rejects[g.batch-1] {
				if r.index == g.rej.index {
					t.Fatalf("%s:%d: two rejections of event %d of batch %d", path, n, r.index, g.batch)
				}
			}
			exp.rejects[g.batch-1] = append(exp.rejects[g.batch-1], g.rej)
		case "deadletters":
			if len(f) != 2 {
				t.Fatalf("%s:%d: want `deadletters count=N`", path, n)
			}
			g.kind = "deadletters"
			g.k = goldenInt(t, path, n, goldenKV(t, path, n, f[1], "count"))
		case "deadletter":
			if len(f) != 5 {
				t.Fatalf("%s:%d: want `deadletter K batch=B index=I code=C`", path, n)
			}
			g.kind = "deadletter"
			g.k = goldenInt(t, path, n, f[1])
			g.batch = goldenInt(t, path, n, goldenKV(t, path, n, f[2], "batch"))
			g.rej = goldenRej{index: int32(goldenInt(t, path, n, goldenKV(t, path, n, f[3], "index"))), field: "ts", code: goldenKV(t, path, n, f[4], "code")}
			checkEvent(n, g.batch, g.rej.index)
		case "stats":
			g.kind = "stats"
			g.stats = map[string]string{}
			for _, kv := range f[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || !slices.Contains([]string{"events", "duplicates", "users", "items", "max_ts"}, k) {
					t.Fatalf("%s:%d: bad stats field %q", path, n, kv)
				}
				g.stats[k] = v
			}
		default:
			// ENTITY ID FEATURE asof=TIME [now=TIME] = VALUE
			if len(f) < 6 || len(f) > 7 || f[len(f)-2] != "=" {
				t.Fatalf("%s:%d: want `ENTITY ID FEATURE asof=TIME [now=TIME] = VALUE`, got %q", path, n, line)
			}
			g.kind = "value"
			g.entity, g.id, g.feature, g.want = f[0], f[1], f[2], f[len(f)-1]
			var err error
			if g.asOf, err = parseGoldenTime(goldenKV(t, path, n, f[3], "asof")); err != nil {
				t.Fatalf("%s:%d: %v", path, n, err)
			}
			if len(f) == 7 {
				if g.now, err = parseGoldenTime(goldenKV(t, path, n, f[4], "now")); err != nil {
					t.Fatalf("%s:%d: %v", path, n, err)
				}
			}
		}
		exp.lines = append(exp.lines, g)
	})
	for _, g := range exp.lines {
		for _, b := range g.bugs {
			if _, ok := exp.bugs[b]; !ok {
				t.Fatalf("%s:%d: tag !%s names no `bug %s` line", path, g.n, b, b)
			}
		}
	}
	for _, rs := range exp.rejects {
		slices.SortFunc(rs, func(a, b goldenRej) int { return int(a.index - b.index) })
	}
	if len(exp.lines) < 20 {
		t.Fatalf("%s: only %d expectations", path, len(exp.lines))
	}
	return exp
}

// goldenViews maps the entities of expected.txt to their default views.
var goldenViews = map[string]string{"user": "user_features", "item": "item_features", "category": "category_features"}

func runGolden(t *testing.T, mode string, in *goldenInput, exp *goldenExpected) {
	checkGoroutines(t)
	e := openEnv(t, vfs.NewMem(), Options{
		Now:             func() time.Time { return in.wallClock },
		AllowedLateness: time.Hour,
		MaxFutureSkew:   5 * time.Minute,
	})
	if mode == goldenPerBatch {
		e.run(t)
	}
	// Ingest, and check each batch's rejections exactly.
	got := make([][]goldenRej, len(in.batches))
	var end uint64
	for b, batch := range in.batches {
		res, err := e.u.Ingest(context.Background(), batch, nil)
		if err != nil {
			t.Fatalf("batch %d: Ingest: %v", b+1, err)
		}
		for _, r := range res.Rejected {
			got[b] = append(got[b], goldenRej{r.Index, r.Field, r.Code})
			if r.Reason == "" {
				t.Errorf("batch %d: rejection %v has no reason", b+1, r)
			}
		}
		if want := exp.rejects[b]; !slices.Equal(got[b], want) {
			t.Errorf("batch %d: rejections %v, want exactly %v", b+1, got[b], want)
		}
		// Late and future events go to the log too, as dead letters.
		dead := 0
		for _, r := range exp.rejects[b] {
			if r.code == CodeLate || r.code == CodeFuture {
				dead++
			}
		}
		if want := len(batch) - len(exp.rejects[b]); res.Accepted != want || res.End != end+uint64(want+dead) {
			t.Errorf("batch %d: Ingest = accepted %d, end %d; want %d accepted, end %d", b+1, res.Accepted, res.End, want, end+uint64(want+dead))
		}
		end = res.End
		if mode == goldenPerBatch {
			e.waitApplied(t, res.End)
		}
	}
	if mode == goldenAtEnd {
		if off := e.store.AppliedOffset(); off != 0 {
			t.Fatalf("applied offset %d before Run", off)
		}
		e.run(t)
	}
	if e.u.LogEnd() != end {
		t.Errorf("LogEnd = %d, want %d", e.u.LogEnd(), end)
	}
	e.waitApplied(t, e.u.LogEnd())

	dead, err := e.store.DeadLetters(1000)
	if err != nil {
		t.Fatal(err)
	}
	newest := e.store.Now() // the event clock: newest event time applied
	for _, g := range exp.lines {
		t.Run(fmt.Sprintf("line%d", g.n), func(t *testing.T) {
			var msg string
			switch g.kind {
			case "reject":
				if !slices.Contains(got[g.batch-1], g.rej) {
					msg = fmt.Sprintf("batch %d rejections are %v", g.batch, got[g.batch-1])
				}
			case "deadletters":
				if n := e.store.DeadLetterCount(); n != int64(g.k) || len(dead) != g.k {
					msg = fmt.Sprintf("DeadLetterCount %d, DeadLetters lists %d", n, len(dead))
				}
			case "deadletter":
				msg = checkGoldenDeadLetter(dead, g, in)
			case "stats":
				msg = checkGoldenStats(e.store.Stats(), g)
			case "value":
				msg = checkGoldenValue(t, e.store, g, newest)
			}
			for _, name := range g.bugs {
				if bug := exp.bugs[name]; bug.mode == mode {
					if msg == "" {
						msg = "the expectation holds now: remove the tag !" + name
					}
					t.Skipf("BUG: %s\nexpected.txt:%d: %s\n%s", bug.text, g.n, g.text, msg)
				}
			}
			if msg != "" {
				t.Errorf("expected.txt:%d: %s\n got: %s", g.n, g.text, msg)
			}
		})
	}
}

func checkGoldenDeadLetter(dead [][]byte, g *goldenLine, in *goldenInput) string {
	if g.k < 1 || g.k > len(dead) {
		return fmt.Sprintf("only %d dead letters", len(dead))
	}
	var dl recsysv1.DeadLetter
	if err := proto.Unmarshal(dead[g.k-1], &dl); err != nil {
		return fmt.Sprintf("dead letter %d: %v", g.k, err)
	}
	want := in.batches[g.batch-1][g.rej.index]
	var bad []string
	if dl.Code != g.rej.code {
		bad = append(bad, "code "+dl.Code)
	}
	if !proto.Equal(dl.Event, want) {
		bad = append(bad, fmt.Sprintf("event %v, want %v (events.txt:%d)", dl.Event, want, in.lines[g.batch-1][g.rej.index]))
	}
	if dl.Reason == "" {
		bad = append(bad, "no reason")
	}
	if !dl.ReceivedAt.AsTime().Equal(in.wallClock) {
		bad = append(bad, "received at "+dl.ReceivedAt.AsTime().Format(time.RFC3339Nano))
	}
	return strings.Join(bad, "; ")
}

func checkGoldenStats(st featurestore.Stats, g *goldenLine) string {
	got := map[string]string{
		"events":     strconv.FormatInt(st.Events, 10),
		"duplicates": strconv.FormatInt(st.Duplicates, 10),
		"users":      strconv.FormatInt(st.Users, 10),
		"items":      strconv.FormatInt(st.Items, 10),
		"max_ts":     fmtGoldenTS(st.MaxTS),
	}
	var bad []string
	for _, k := range []string{"events", "duplicates", "users", "items", "max_ts"} {
		if want, ok := g.stats[k]; ok && got[k] != want {
			bad = append(bad, k+"="+got[k])
		}
	}
	return strings.Join(bad, " ")
}

// checkGoldenValue reads one feature value and returns "" if it is as
// expected, else what it is.
func checkGoldenValue(t *testing.T, s *featurestore.Store, g *goldenLine, newest int64) string {
	t.Helper()
	v, err := s.Definitions().View(goldenViews[g.entity])
	if err != nil || goldenViews[g.entity] == "" {
		t.Fatalf("expected.txt:%d: entity %q: %v", g.n, g.entity, err)
	}
	idx, err := v.Resolve([]string{g.feature})
	if err != nil {
		t.Fatalf("expected.txt:%d: %v", g.n, err)
	}
	rt := featurestore.ReadTime{Now: newest, AsOf: g.asOf}
	if g.now != 0 {
		rt.Now = g.now
	}
	rows, err := s.Get(v, []string{g.id}, idx, rt)
	if err != nil {
		t.Fatalf("expected.txt:%d: Get: %v", g.n, err)
	}
	got := rows[0].Values[0]
	for _, st := range []featurestore.Status{featurestore.StatusNotFound, featurestore.StatusExpired, featurestore.StatusNotVersioned} {
		if g.want == st.String() {
			if got.Status != st {
				return fmt.Sprintf("%v %+v", got.Status, got)
			}
			return ""
		}
	}
	if got.Status != featurestore.StatusPresent {
		return fmt.Sprintf("%v %+v", got.Status, got)
	}
	switch f := &v.Features[idx[0]]; f.Kind {
	case featurestore.KindInt:
		want, err := strconv.ParseInt(g.want, 10, 64)
		if err != nil {
			t.Fatalf("expected.txt:%d: %v", g.n, err)
		}
		if got.Int != want {
			return strconv.FormatInt(got.Int, 10)
		}
	case featurestore.KindTimestamp:
		want, err := parseGoldenTime(g.want)
		if err != nil {
			t.Fatalf("expected.txt:%d: %v", g.n, err)
		}
		if got.Int != want {
			return fmtGoldenTS(got.Int)
		}
	case featurestore.KindFloat:
		num, den, isQ := strings.Cut(g.want, "/")
		want, err := strconv.ParseFloat(num, 64)
		if err == nil && isQ {
			var d float64
			d, err = strconv.ParseFloat(den, 64)
			want /= d
		}
		if err != nil {
			t.Fatalf("expected.txt:%d: %v", g.n, err)
		}
		if math.Abs(got.Float-want) > 1e-9*max(1, math.Abs(want)) {
			return fmt.Sprintf("%.12g (want %.12g)", got.Float, want)
		}
	case featurestore.KindString:
		if got.Str != g.want {
			return strconv.Quote(got.Str)
		}
	case featurestore.KindStringList:
		inner, ok := strings.CutPrefix(g.want, "[")
		inner, ok2 := strings.CutSuffix(inner, "]")
		if !ok || !ok2 {
			t.Fatalf("expected.txt:%d: want a list [a,b], got %q", g.n, g.want)
		}
		var want []string
		if inner != "" {
			want = strings.Split(inner, ",")
		}
		if !slices.Equal(got.List, want) {
			return "[" + strings.Join(got.List, ",") + "]"
		}
	default:
		t.Fatalf("expected.txt:%d: feature %s has kind %v", g.n, f.Name, f.Kind)
	}
	return ""
}
