package featurestore

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// t0 is an arbitrary event time (2023-11-14T22:13:20Z) the tests count from.
const (
	t0     = int64(1_700_000_000_000)
	hour   = int64(time.Hour / time.Millisecond)
	minute = int64(time.Minute / time.Millisecond)
)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// openStore opens dir on fs and closes the store when the test ends.
func openStore(t testing.TB, fs vfs.FS, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{FS: fs, Logger: quietLogger(), CacheBytes: 8 << 20})
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newMemStore(t testing.TB) (*Store, vfs.FS) {
	t.Helper()
	fs := vfs.NewMem()
	return openStore(t, fs, "store"), fs
}

// setRaw sets key k to v in s's DB and publishes the new version, as a
// commit does (version.go): the store's read methods see it.
func setRaw(t testing.TB, s *Store, k, v []byte) {
	t.Helper()
	if err := s.db.Set(k, v, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	s.publish(s.db.NewSnapshot(), func() {})
}

// checkGoroutines fails the test if, once every later-registered cleanup
// (such as closing the store) has run, more goroutines exist than at the
// call. Register it before opening anything.
func checkGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		// Goroutines that were told to stop may take a moment to return;
		// yield rather than sleep until they have.
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d goroutines, %d before the test\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			runtime.Gosched()
		}
	})
}

func ev(id, user, item, cat string, b Behavior, ts int64) Event {
	return Event{ID: id, UserID: user, ItemID: item, CategoryID: cat, Behavior: b, TS: ts}
}

// entries numbers evs with consecutive offsets from first.
func entries(first uint64, evs ...Event) []Entry {
	out := make([]Entry, len(evs))
	for i, e := range evs {
		out[i] = Entry{Offset: first + uint64(i), Event: e}
	}
	return out
}

func mustApply(t testing.TB, s *Store, end uint64, es []Entry) ApplyResult {
	t.Helper()
	res, err := s.Apply(end, es)
	if err != nil {
		t.Fatalf("Apply(%d, %d entries): %v", end, len(es), err)
	}
	return res
}

func mustUser(t testing.TB, s *Store, id string) UserRecord {
	t.Helper()
	u, ok, err := s.User(id)
	if err != nil || !ok {
		t.Fatalf("User(%q) = found %v, err %v", id, ok, err)
	}
	return u
}

func mustItem(t testing.TB, s *Store, id string) ItemRecord {
	t.Helper()
	it, ok, err := s.Item(id)
	if err != nil || !ok {
		t.Fatalf("Item(%q) = found %v, err %v", id, ok, err)
	}
	return it
}

func recentIDs(list []Recent) []string {
	out := make([]string, len(list))
	for i, r := range list {
		out[i] = r.ID
	}
	return out
}

func scoredIDs(list []Scored) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.ItemID
	}
	return out
}

func mustPopular(t testing.TB, s *Store, cat string, k int) []Scored {
	t.Helper()
	out, err := s.Popular(cat, k, nil)
	if err != nil {
		t.Fatalf("Popular(%q, %d): %v", cat, k, err)
	}
	return out
}

// popIndexEntry is one decoded key of the popularity index.
type popIndexEntry struct {
	cat, item string
	pop       float64
}

// rawPopIndex lists every entry of the published popularity index.
func rawPopIndex(t testing.TB, s *Store) []popIndexEntry {
	t.Helper()
	s.pub.RLock()
	defer s.pub.RUnlock()
	var out []popIndexEntry
	for cat, tr := range s.pub.pop {
		tr.Ascend(func(e popEntry) bool {
			out = append(out, popIndexEntry{cat: cat, item: e.id, pop: e.pop})
			return true
		})
	}
	// And nothing under the prefix an older version wrote.
	if ok, err := s.hasPrefix(prefixPop); err != nil || ok {
		t.Fatalf("popularity keys left in Pebble: %v, %v", ok, err)
	}
	return out
}

// checkPopIndex verifies that the popularity index holds, for every item,
// exactly one global entry and one entry under its current category, both
// with its current score, and nothing else.
func checkPopIndex(t testing.TB, s *Store) {
	t.Helper()
	type key struct{ cat, item string }
	seen := make(map[key]bool)
	for _, e := range rawPopIndex(t, s) {
		k := key{e.cat, e.item}
		if seen[k] {
			t.Errorf("popularity index: item %q listed twice under category %q", e.item, e.cat)
		}
		seen[k] = true
		it, ok, err := s.Item(e.item)
		if err != nil || !ok {
			t.Errorf("popularity index: item %q under %q has no record (found %v, err %v)", e.item, e.cat, ok, err)
			continue
		}
		if e.cat != "" && e.cat != it.CategoryID {
			t.Errorf("popularity index: stale entry of item %q under category %q (current %q)", e.item, e.cat, it.CategoryID)
		}
		if math.Float64bits(e.pop) != math.Float64bits(it.Pop) {
			t.Errorf("popularity index: item %q under %q has score %v, record has %v", e.item, e.cat, e.pop, it.Pop)
		}
	}
	err := s.Scan(ItemView, "", "", nil, evNow(s), func(r *Row) error {
		it := mustItem(t, s, r.ID)
		if !seen[key{"", r.ID}] {
			t.Errorf("popularity index: item %q missing from the global index", r.ID)
		}
		if it.CategoryID != "" && !seen[key{it.CategoryID, r.ID}] {
			t.Errorf("popularity index: item %q missing from category %q", r.ID, it.CategoryID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestApplyFeatures(t *testing.T) {
	checkGoroutines(t)
	s, _ := newMemStore(t)
	batch := entries(0,
		ev("e1", "u1", "i1", "c1", BehaviorView, t0),
		ev("e2", "u1", "i2", "c1", BehaviorCart, t0+1000),
		ev("e3", "u1", "i1", "c1", BehaviorView, t0+2000),
		ev("e4", "u1", "i3", "c2", BehaviorPurchase, t0+3000),
		ev("e5", "u1", "i2", "c1", BehaviorFav, t0+500), // out of order
		ev("e6", "u2", "i1", "c1", BehaviorView, t0-1000),
		ev("e7", "u2", "i4", "", BehaviorView, t0-500), // no category
	)
	res := mustApply(t, s, 7, batch)
	if res != (ApplyResult{Applied: 7}) {
		t.Errorf("ApplyResult = %+v, want 7 applied", res)
	}

	u1 := mustUser(t, s, "u1")
	wantU1 := UserRecord{
		Counters: Counters{
			Count:     [numBehaviors]int64{2, 1, 1, 1},
			LastTS:    [numBehaviors]int64{t0 + 2000, t0 + 1000, t0 + 500, t0 + 3000},
			FirstTS:   t0,
			LastTSAny: t0 + 3000,
		},
		RecentItems:      []Recent{{ID: "i3", TS: t0 + 3000}, {ID: "i1", TS: t0 + 2000}, {ID: "i2", TS: t0 + 1000}},
		RecentCategories: []Recent{{ID: "c2", TS: t0 + 3000}, {ID: "c1", TS: t0 + 2000}},
	}
	if !userEqual(u1, wantU1) {
		t.Errorf("User(u1) =\n %+v\nwant\n %+v", u1, wantU1)
	}
	u2 := mustUser(t, s, "u2")
	if got := recentIDs(u2.RecentCategories); !slices.Equal(got, []string{"c1"}) {
		t.Errorf("u2 recent categories = %v, want [c1] (empty categories are not recorded)", got)
	}
	if got := recentIDs(u2.RecentItems); !slices.Equal(got, []string{"i4", "i1"}) {
		t.Errorf("u2 recent items = %v, want [i4 i1]", got)
	}

	i1 := mustItem(t, s, "i1")
	if i1.Count != [numBehaviors]int64{3, 0, 0, 0} || i1.FirstTS != t0-1000 || i1.LastTSAny != t0+2000 ||
		i1.LastTS != [numBehaviors]int64{t0 + 2000, 0, 0, 0} || i1.CategoryID != "c1" || i1.CategoryTS != t0+2000 {
		t.Errorf("Item(i1) = %+v", i1)
	}
	i2 := mustItem(t, s, "i2")
	if i2.Count != [numBehaviors]int64{0, 1, 1, 0} || i2.LastTS != [numBehaviors]int64{0, t0 + 1000, t0 + 500, 0} ||
		i2.FirstTS != t0+500 || i2.LastTSAny != t0+1000 {
		t.Errorf("Item(i2) = %+v", i2)
	}
	if i4 := mustItem(t, s, "i4"); i4.CategoryID != "" || i4.CategoryTS != 0 {
		t.Errorf("Item(i4) category = %q@%d, want none", i4.CategoryID, i4.CategoryTS)
	}
	if _, ok, err := s.User("nobody"); ok || err != nil {
		t.Errorf("User(nobody) = found %v, err %v; want not found", ok, err)
	}
	if it, ok, err := s.Item("nothing"); ok || err != nil || !math.IsInf(it.Pop, -1) {
		t.Errorf("Item(nothing) = %+v, found %v, err %v; want not found with Pop -Inf", it, ok, err)
	}

	want := Stats{AppliedOffset: 7, Events: 7, Users: 2, Items: 4, MaxTS: t0 + 3000}
	if st := s.Stats(); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	if s.AppliedOffset() != 7 {
		t.Errorf("AppliedOffset = %d, want 7", s.AppliedOffset())
	}
	if n := s.Count(UserView); n != 2 {
		t.Errorf("Count(UserView) = %d, want 2", n)
	}
	if n := s.Count(ItemView); n != 4 {
		t.Errorf("Count(ItemView) = %d, want 4", n)
	}

	// The same values through the user view.
	idx, err := UserView.Resolve([]string{"view_count", "cart_count", "fav_count", "purchase_count",
		"first_event_ts", "last_event_ts", "recent_items", "recent_categories"})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := s.Get(UserView, []string{"u1", "nobody"}, idx, evNow(s))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].ID != "u1" || !rows[0].Found || rows[1].ID != "nobody" || rows[1].Found {
		t.Fatalf("Get rows = %+v", rows)
	}
	wantVals := []Value{
		{Status: StatusPresent, Int: 2, EventTS: t0 + 2000},         // view_count
		{Status: StatusPresent, Int: 1, EventTS: t0 + 1000},         // cart_count
		{Status: StatusPresent, Int: 1, EventTS: t0 + 500},          // fav_count
		{Status: StatusPresent, Int: 1, EventTS: t0 + 3000},         // purchase_count
		{Status: StatusPresent, Int: t0, EventTS: t0},               // first_event_ts
		{Status: StatusPresent, Int: t0 + 3000, EventTS: t0 + 3000}, // last_event_ts
		{Status: StatusPresent, List: []string{"i3", "i1", "i2"}, EventTS: t0 + 3000},
		{Status: StatusPresent, List: []string{"c2", "c1"}, EventTS: t0 + 3000},
	}
	if len(idx) != len(wantVals) {
		t.Fatalf("resolved %d features, test expects %d", len(idx), len(wantVals))
	}
	for i, w := range wantVals {
		if got := rows[0].Values[i]; !valueEqual(got, w) {
			t.Errorf("u1 %s = %+v, want %+v", UserView.Features[idx[i]].Name, got, w)
		}
		if got := rows[1].Values[i]; got.Status == StatusPresent {
			t.Errorf("nobody %s = %+v, want absent", UserView.Features[idx[i]].Name, got)
		}
	}

	// A subset, in the requested order.
	idx, err = UserView.Resolve([]string{"recent_categories", "purchase_count"})
	if err != nil {
		t.Fatal(err)
	}
	rows, err = s.Get(UserView, []string{"u2", "u1"}, idx, evNow(s))
	if err != nil {
		t.Fatal(err)
	}
	if got := rows[1].Values; len(got) != 2 || !slices.Equal(got[0].List, []string{"c2", "c1"}) || got[1].Int != 1 {
		t.Errorf("u1 subset values = %+v", got)
	}
	if got := rows[0].Values; len(got) != 2 || !slices.Equal(got[0].List, []string{"c1"}) || got[1].Int != 0 || got[1].EventTS != 0 {
		t.Errorf("u2 subset values = %+v", got)
	}

	// The item view.
	idx, err = ItemView.Resolve([]string{"category_id", "view_count", "first_event_ts", "last_event_ts"})
	if err != nil {
		t.Fatal(err)
	}
	rows, err = s.Get(ItemView, []string{"i1", "i4", "zz"}, idx, evNow(s))
	if err != nil {
		t.Fatal(err)
	}
	wantItem := [][]Value{
		{{Status: StatusPresent, Str: "c1", EventTS: t0 + 2000}, {Status: StatusPresent, Int: 3, EventTS: t0 + 2000},
			{Status: StatusPresent, Int: t0 - 1000, EventTS: t0 - 1000}, {Status: StatusPresent, Int: t0 + 2000, EventTS: t0 + 2000}},
		{{Status: StatusNotFound}, {Status: StatusPresent, Int: 1, EventTS: t0 - 500},
			{Status: StatusPresent, Int: t0 - 500, EventTS: t0 - 500}, {Status: StatusPresent, Int: t0 - 500, EventTS: t0 - 500}},
		{{}, {}, {}, {}},
	}
	for r, want := range wantItem {
		for j, w := range want {
			if got := rows[r].Values[j]; !valueEqual(got, w) {
				t.Errorf("item %s %s = %+v, want %+v", rows[r].ID, ItemView.Features[idx[j]].Name, got, w)
			}
		}
	}
	if !rows[0].Found || !rows[1].Found || rows[2].Found {
		t.Errorf("item rows found = %v %v %v, want true true false", rows[0].Found, rows[1].Found, rows[2].Found)
	}
}

func userEqual(a, b UserRecord) bool {
	return a.Counters == b.Counters && slices.Equal(a.RecentItems, b.RecentItems) &&
		slices.Equal(a.RecentCategories, b.RecentCategories)
}

func valueEqual(a, b Value) bool {
	return a.Status == b.Status && a.Int == b.Int && a.Str == b.Str && a.EventTS == b.EventTS &&
		slices.Equal(a.List, b.List)
}

func TestRecentCapAndOrder(t *testing.T) {
	s, _ := newMemStore(t)
	var evs []Event
	for i := range 25 {
		evs = append(evs, ev(fmt.Sprint("e", i), "u", fmt.Sprint("i", i), fmt.Sprint("c", i%3), BehaviorView, t0+int64(i)*1000))
	}
	mustApply(t, s, 25, entries(0, evs...))
	u := mustUser(t, s, "u")
	var want []string
	for i := 24; i >= 5; i-- {
		want = append(want, fmt.Sprint("i", i))
	}
	if got := recentIDs(u.RecentItems); !slices.Equal(got, want) {
		t.Fatalf("recent items = %v, want %v", got, want)
	}
	if got := recentIDs(u.RecentCategories); !slices.Equal(got, []string{"c0", "c2", "c1"}) {
		t.Fatalf("recent categories = %v, want [c0 c2 c1]", got)
	}

	// An evicted item seen again at an old time stays out; an item in the
	// list seen again later moves to the front; seen again earlier, it stays.
	mustApply(t, s, 28, entries(25,
		ev("x1", "u", "i3", "c0", BehaviorView, t0+3500),
		ev("x2", "u", "i10", "c1", BehaviorCart, t0+99_000),
		ev("x3", "u", "i24", "c0", BehaviorView, t0+100),
	))
	u = mustUser(t, s, "u")
	want = append([]string{"i10"}, slices.DeleteFunc(want, func(s string) bool { return s == "i10" })...)
	if got := recentIDs(u.RecentItems); !slices.Equal(got, want) {
		t.Fatalf("recent items = %v, want %v", got, want)
	}
	if u.RecentItems[0].TS != t0+99_000 || u.RecentItems[1].TS != t0+24_000 {
		t.Fatalf("recent item times = %+v", u.RecentItems[:2])
	}
	if got := recentIDs(u.RecentCategories); !slices.Equal(got, []string{"c1", "c0", "c2"}) {
		t.Fatalf("recent categories = %v, want [c1 c0 c2]", got)
	}

	// A new item newer than the oldest entry evicts it.
	mustApply(t, s, 29, entries(28, ev("x4", "u", "new", "", BehaviorView, t0+5500)))
	u = mustUser(t, s, "u")
	if len(u.RecentItems) != MaxRecent || u.RecentItems[MaxRecent-1].ID != "new" {
		t.Fatalf("recent items = %v, want 20 ending in new", recentIDs(u.RecentItems))
	}
}

func TestPushRecent(t *testing.T) {
	full := func() []Recent { // f19@19 ... f0@0, newest first
		var l []Recent
		for i := MaxRecent - 1; i >= 0; i-- {
			l = append(l, Recent{ID: fmt.Sprint("f", i), TS: int64(i * 10)})
		}
		return l
	}
	fullIDs := recentIDs(full())
	tests := []struct {
		name string
		list []Recent
		id   string
		ts   int64
		want []string
	}{
		{"empty id ignored", []Recent{{ID: "a", TS: 5}}, "", 9, []string{"a"}},
		{"into empty", nil, "a", 5, []string{"a"}},
		{"newer to front", []Recent{{ID: "a", TS: 5}}, "b", 6, []string{"b", "a"}},
		{"older to back", []Recent{{ID: "a", TS: 5}}, "b", 4, []string{"a", "b"}},
		{"middle", []Recent{{ID: "a", TS: 9}, {ID: "b", TS: 5}}, "c", 7, []string{"a", "c", "b"}},
		{"equal time goes first", []Recent{{ID: "a", TS: 5}}, "b", 5, []string{"b", "a"}},
		{"existing newer moves", []Recent{{ID: "a", TS: 9}, {ID: "b", TS: 5}}, "b", 10, []string{"b", "a"}},
		{"existing older stays", []Recent{{ID: "a", TS: 9}, {ID: "b", TS: 5}}, "a", 1, []string{"a", "b"}},
		{"existing same time stays", []Recent{{ID: "a", TS: 9}, {ID: "b", TS: 9}}, "b", 9, []string{"a", "b"}},
		{"full, older than all", full(), "x", -1, fullIDs},
		{"full, newest evicts last", full(), "x", 1000, append([]string{"x"}, fullIDs[:MaxRecent-1]...)},
		{"full, middle evicts last", full(), "x", 105, slices.Concat(fullIDs[:9], []string{"x"}, fullIDs[9:MaxRecent-1])},
		{"full, existing moves without evicting", full(), "f0", 1000, append([]string{"f0"}, fullIDs[:MaxRecent-1]...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := pushRecent(slices.Clone(tc.list), tc.id, tc.ts)
			if ids := recentIDs(got); !slices.Equal(ids, tc.want) {
				t.Fatalf("pushRecent(%v, %q, %d) = %v, want %v", recentIDs(tc.list), tc.id, tc.ts, ids, tc.want)
			}
			if len(got) > MaxRecent {
				t.Fatalf("len = %d > %d", len(got), MaxRecent)
			}
			for i := 1; i < len(got); i++ {
				if got[i].TS > got[i-1].TS {
					t.Fatalf("not newest first: %+v", got)
				}
			}
		})
	}
}

func TestLogAddExp2(t *testing.T) {
	inf := math.Inf(-1)
	tests := []struct{ a, b, want float64 }{
		{inf, inf, inf},
		{inf, 3, 3},
		{3, inf, 3},
		{0, 0, 1},
		{1, 1, 2},
		{2, 0, math.Log2(5)},
		{0, 2, math.Log2(5)},
		{100000, 100000, 100001},   // would overflow 2^x
		{-100000, -100000, -99999}, // would underflow 2^x
		{80000, 0, 80000},          // the smaller term vanishes
		{78000.5, 78000.5 - 1, 78000.5 + math.Log2(1.5)},
	}
	for _, tc := range tests {
		got := LogAddExp2(tc.a, tc.b)
		if !(got == tc.want || math.Abs(got-tc.want) <= 1e-12*math.Max(1, math.Abs(tc.want))) {
			t.Errorf("LogAddExp2(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestPopularityOrder(t *testing.T) {
	// The index orders higher scores first, then by item id.
	tr := newPopTree()
	for _, e := range []popEntry{{5, "b"}, {5, "a"}, {1, "a"}, {math.Inf(-1), "z"}, {7, "z"}} {
		tr.ReplaceOrInsert(e)
	}
	var got []string
	tr.Ascend(func(e popEntry) bool { got = append(got, fmt.Sprint(e.id, e.pop)); return true })
	if want := []string{"z7", "a5", "b5", "a1", "z-Inf"}; !slices.Equal(got, want) {
		t.Errorf("popularity order = %v, want %v", got, want)
	}
}

func TestPrefixEnd(t *testing.T) {
	tests := []struct{ in, want []byte }{
		{[]byte("u/"), []byte("u0")},
		{[]byte("a\xff"), []byte("b")},
		{[]byte("a\xff\xff"), []byte("b")},
		{[]byte("\xff\xff"), nil},
		{[]byte("p/c\x00"), []byte("p/c\x01")},
	}
	for _, tc := range tests {
		if got := prefixEnd(tc.in); !bytes.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("prefixEnd(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDedup(t *testing.T) {
	s, _ := newMemStore(t)
	a := ev("a", "u", "i", "c", BehaviorView, t0)
	b := ev("b", "u", "i", "c", BehaviorCart, t0+1)
	res := mustApply(t, s, 4, entries(0, a, b, a, a))
	if res != (ApplyResult{Applied: 2, Duplicates: 2}) {
		t.Errorf("first batch = %+v, want 2 applied 2 duplicates", res)
	}
	// Across batches, including a different event reusing an id.
	c := ev("c", "u", "i", "c", BehaviorFav, t0+2)
	other := ev("a", "v", "j", "d", BehaviorPurchase, t0+3)
	res = mustApply(t, s, 8, entries(4, b, c, other, c))
	if res != (ApplyResult{Applied: 1, Duplicates: 3}) {
		t.Errorf("second batch = %+v, want 1 applied 3 duplicates", res)
	}
	u := mustUser(t, s, "u")
	if u.Count != [numBehaviors]int64{1, 1, 1, 0} {
		t.Errorf("counts = %v, want [1 1 1 0]", u.Count)
	}
	if _, ok, _ := s.User("v"); ok {
		t.Errorf("user v exists although its only event had a duplicate id")
	}
	want := Stats{AppliedOffset: 8, Events: 3, Duplicates: 5, Users: 1, Items: 1, MaxTS: t0 + 2}
	if st := s.Stats(); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
}

func TestApplyOffsets(t *testing.T) {
	s, _ := newMemStore(t)
	evs := []Event{
		ev("e0", "u", "i0", "c", BehaviorView, t0),
		ev("e1", "u", "i1", "c", BehaviorView, t0+1),
		ev("e2", "u", "i2", "c", BehaviorView, t0+2),
		ev("e3", "u", "i3", "c", BehaviorView, t0+3),
		ev("e4", "u", "i4", "c", BehaviorView, t0+4),
	}
	all := entries(0, evs...)
	mustApply(t, s, 3, all[:3])
	before := s.Stats()

	t.Run("reapply is a no-op", func(t *testing.T) {
		res := mustApply(t, s, 3, all[:3])
		if res != (ApplyResult{}) {
			t.Errorf("re-apply = %+v, want nothing", res)
		}
		if st := s.Stats(); st != before {
			t.Errorf("Stats after re-apply = %+v, want %+v", st, before)
		}
	})
	t.Run("overlap skips the applied prefix", func(t *testing.T) {
		res := mustApply(t, s, 5, all)
		if res != (ApplyResult{Applied: 2}) {
			t.Errorf("overlapping apply = %+v, want 2 applied, 0 duplicates", res)
		}
		if u := mustUser(t, s, "u"); u.Count[BehaviorView] != 5 {
			t.Errorf("view count = %d, want 5", u.Count[BehaviorView])
		}
		if st := s.Stats(); st.Events != 5 || st.Duplicates != 0 || st.AppliedOffset != 5 {
			t.Errorf("Stats = %+v", st)
		}
	})
	t.Run("end past the last entry", func(t *testing.T) {
		mustApply(t, s, 10, entries(5, ev("e5", "u", "i5", "c", BehaviorView, t0+5)))
		if st := s.Stats(); st.AppliedOffset != 10 || st.Events != 6 {
			t.Fatalf("Stats = %+v, want applied offset 10, 6 events", st)
		}
		// An entry in the gap is below the applied offset now: skipped.
		res := mustApply(t, s, 10, entries(7, ev("late", "u", "late", "c", BehaviorView, t0+7)))
		if res != (ApplyResult{}) {
			t.Errorf("apply of an entry in the gap = %+v, want skipped", res)
		}
		// No entries at all still moves the offset.
		mustApply(t, s, 12, nil)
		if s.AppliedOffset() != 12 {
			t.Errorf("AppliedOffset = %d, want 12", s.AppliedOffset())
		}
	})
	t.Run("errors commit nothing", func(t *testing.T) {
		before := s.Stats()
		if _, err := s.Apply(11, nil); err == nil {
			t.Errorf("Apply with end before the applied offset succeeded")
		}
		bad := entries(12, ev("n1", "new", "i", "c", BehaviorView, t0), ev("n2", "new", "i", "c", BehaviorView, t0))
		if _, err := s.Apply(13, bad); err == nil {
			t.Errorf("Apply with an entry at end succeeded")
		}
		if st := s.Stats(); st != before {
			t.Errorf("Stats after failed applies = %+v, want %+v", st, before)
		}
		if _, ok, _ := s.User("new"); ok {
			t.Errorf("a failed Apply wrote user new")
		}
		// The ids of the failed batch are not marked as seen.
		if res := mustApply(t, s, 14, bad); res.Applied != 2 {
			t.Errorf("retry after failure = %+v, want 2 applied", res)
		}
	})
}

func TestReopenKeepsState(t *testing.T) {
	checkGoroutines(t)
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	evs := []Event{
		ev("a", "u1", "i1", "c1", BehaviorPurchase, t0),
		ev("b", "u1", "i2", "c2", BehaviorView, t0+hour),
		ev("c", "u2", "i1", "c1", BehaviorCart, t0+2*hour),
		ev("a", "u1", "i1", "c1", BehaviorPurchase, t0), // duplicate
	}
	mustApply(t, s, 6, entries(0, evs...))
	st := s.Stats()
	u1 := mustUser(t, s, "u1")
	i1 := mustItem(t, s, "i1")
	pop := mustPopular(t, s, "", 10)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openStore(t, fs, "db")
	if got := s.Stats(); got != st {
		t.Errorf("Stats after reopen = %+v, want %+v", got, st)
	}
	if got := mustUser(t, s, "u1"); !userEqual(got, u1) {
		t.Errorf("u1 after reopen = %+v, want %+v", got, u1)
	}
	if got := mustItem(t, s, "i1"); got != i1 {
		t.Errorf("i1 after reopen = %+v, want %+v", got, i1)
	}
	if got := mustPopular(t, s, "", 10); !slices.Equal(got, pop) {
		t.Errorf("Popular after reopen = %v, want %v", got, pop)
	}
	if ok, err := s.Purchased("u1", "i1"); !ok || err != nil {
		t.Errorf("Purchased(u1, i1) after reopen = %v, %v", ok, err)
	}
	// The dedup set survives too.
	res := mustApply(t, s, 8, entries(6, evs[1], ev("d", "u3", "i3", "", BehaviorView, t0)))
	if res != (ApplyResult{Applied: 1, Duplicates: 1}) {
		t.Errorf("apply after reopen = %+v, want 1 applied 1 duplicate", res)
	}
	if got := s.Stats(); got.Users != 3 || got.Items != 3 || got.Events != 4 || got.Duplicates != 2 {
		t.Errorf("Stats = %+v", got)
	}
}

func TestPopular(t *testing.T) {
	s, _ := newMemStore(t)
	// Relative to t0, in units of a view at t0: A 4, B 4*2^(1/360), C 3,
	// D 2, E 1 (a fav half a day... one half-life before t0), F 0.5.
	mustApply(t, s, 8, entries(0,
		ev("a", "u", "A", "x", BehaviorView, t0+12*hour),
		ev("b", "u", "B", "y", BehaviorPurchase, t0+60_000),
		ev("c", "u", "C", "x", BehaviorCart, t0),
		ev("d1", "u", "D", "y", BehaviorView, t0),
		ev("d2", "v", "D", "y", BehaviorView, t0),
		ev("e", "u", "E", "x", BehaviorFav, t0-6*hour),
		ev("f", "u", "F", "", BehaviorView, t0-6*hour),
	))
	ref := 4.0 // scores are relative to the newest event, t0+12h
	want := []Scored{
		{"B", 4 * math.Exp2(1.0/360) / ref},
		{"A", 4 / ref},
		{"C", 3 / ref},
		{"D", 2 / ref},
		{"E", 1 / ref},
		{"F", 0.5 / ref},
	}
	checkScored := func(t *testing.T, got, want []Scored) {
		t.Helper()
		if !slices.Equal(scoredIDs(got), scoredIDs(want)) {
			t.Fatalf("order = %v, want %v", scoredIDs(got), scoredIDs(want))
		}
		for i := range got {
			if math.Abs(got[i].Score-want[i].Score) > 1e-9 {
				t.Errorf("score of %s = %v, want %v", got[i].ItemID, got[i].Score, want[i].Score)
			}
		}
	}
	t.Run("global", func(t *testing.T) { checkScored(t, mustPopular(t, s, "", 100), want) })
	t.Run("k", func(t *testing.T) {
		checkScored(t, mustPopular(t, s, "", 2), want[:2])
		if got := mustPopular(t, s, "", 0); len(got) != 0 {
			t.Errorf("k=0 returned %v", got)
		}
	})
	t.Run("category", func(t *testing.T) {
		checkScored(t, mustPopular(t, s, "x", 100), []Scored{want[1], want[2], want[4]})
		checkScored(t, mustPopular(t, s, "y", 100), []Scored{want[0], want[3]})
		if got := mustPopular(t, s, "none", 10); len(got) != 0 {
			t.Errorf("unknown category returned %v", got)
		}
		// A category whose name is a prefix of another must not see its items.
		if got := mustPopular(t, s, "", 100); len(got) != 6 {
			t.Errorf("global has %d items", len(got))
		}
	})
	t.Run("skip", func(t *testing.T) {
		got, err := s.Popular("", 3, func(item string) bool { return item == "B" || item == "C" })
		if err != nil {
			t.Fatal(err)
		}
		checkScored(t, got, []Scored{want[1], want[3], want[4]})
	})
	t.Run("PopularityScore", func(t *testing.T) {
		it := mustItem(t, s, "C")
		if got := s.PopularityScore(it.Pop); math.Abs(got-0.75) > 1e-9 {
			t.Errorf("PopularityScore(C) = %v, want 0.75", got)
		}
		if got := s.PopularityScore(math.Inf(-1)); got != 0 {
			t.Errorf("PopularityScore(-Inf) = %v, want 0", got)
		}
	})
	t.Run("pop value", func(t *testing.T) {
		// Pop is log2(sum w * 2^(ts/halfLife)).
		half := float64(6 * hour)
		if got, want := mustItem(t, s, "D").Pop, 1+float64(t0)/half; math.Abs(got-want) > 1e-9 {
			t.Errorf("Pop(D) = %v, want %v", got, want)
		}
	})
	checkPopIndex(t, s)
}

func TestPopularHalfLifeOption(t *testing.T) {
	// With a 1h half-life, a view 3h later (2^3 = 8) beats a purchase (4).
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), PopularityHalfLife: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustApply(t, s, 2, entries(0,
		ev("a", "u", "buy", "", BehaviorPurchase, t0),
		ev("b", "u", "view", "", BehaviorView, t0+3*hour),
	))
	if got := scoredIDs(mustPopular(t, s, "", 10)); !slices.Equal(got, []string{"view", "buy"}) {
		t.Errorf("order with 1h half-life = %v, want [view buy]", got)
	}
	// With the 6h default, the purchase wins (4 > 2^0.5).
	s2, _ := newMemStore(t)
	mustApply(t, s2, 2, entries(0,
		ev("a", "u", "buy", "", BehaviorPurchase, t0),
		ev("b", "u", "view", "", BehaviorView, t0+3*hour),
	))
	if got := scoredIDs(mustPopular(t, s2, "", 10)); !slices.Equal(got, []string{"buy", "view"}) {
		t.Errorf("order with 6h half-life = %v, want [buy view]", got)
	}
}

func TestCategoryChange(t *testing.T) {
	s, _ := newMemStore(t)
	mustApply(t, s, 2, entries(0,
		ev("1", "u", "x", "c1", BehaviorView, t0),
		ev("2", "u", "y", "c1", BehaviorView, t0+1),
	))
	cats := func() map[string][]string {
		m := make(map[string][]string)
		for _, c := range []string{"", "c1", "c2", "c3"} {
			m[c] = scoredIDs(mustPopular(t, s, c, 100))
			slices.Sort(m[c])
		}
		return m
	}
	check := func(step string, want map[string][]string) {
		t.Helper()
		got := cats()
		for c, w := range want {
			if !slices.Equal(got[c], w) {
				t.Errorf("%s: Popular(%q) = %v, want %v", step, c, got[c], w)
			}
		}
		checkPopIndex(t, s)
	}
	check("start", map[string][]string{"": {"x", "y"}, "c1": {"x", "y"}, "c2": nil})

	mustApply(t, s, 3, entries(2, ev("3", "u", "x", "c2", BehaviorView, t0+10)))
	check("moved to c2", map[string][]string{"": {"x", "y"}, "c1": {"y"}, "c2": {"x"}})
	if it := mustItem(t, s, "x"); it.CategoryID != "c2" || it.CategoryTS != t0+10 {
		t.Errorf("x category = %q@%d", it.CategoryID, it.CategoryTS)
	}

	// An older event naming another category does not move it; an event
	// without a category does not either.
	mustApply(t, s, 5, entries(3,
		ev("4", "u", "x", "c3", BehaviorView, t0+5),
		ev("5", "u", "x", "", BehaviorView, t0+20),
	))
	check("older and empty", map[string][]string{"": {"x", "y"}, "c1": {"y"}, "c2": {"x"}, "c3": nil})
	if it := mustItem(t, s, "x"); it.CategoryID != "c2" || it.CategoryTS != t0+10 {
		t.Errorf("x category = %q@%d, want c2@%d", it.CategoryID, it.CategoryTS, t0+10)
	}

	// Several moves within one batch leave one entry under the last.
	mustApply(t, s, 8, entries(5,
		ev("6", "u", "y", "c2", BehaviorView, t0+30),
		ev("7", "u", "y", "c3", BehaviorView, t0+40),
		ev("8", "u", "y", "c1", BehaviorView, t0+35),
	))
	check("moves in one batch", map[string][]string{"": {"x", "y"}, "c1": nil, "c2": {"x"}, "c3": {"y"}})

	// A new item moving within its first batch.
	mustApply(t, s, 10, entries(8,
		ev("9", "u", "z", "c1", BehaviorView, t0+50),
		ev("10", "u", "z", "c2", BehaviorView, t0+60),
	))
	check("new item", map[string][]string{"": {"x", "y", "z"}, "c1": nil, "c2": {"x", "z"}, "c3": {"y"}})
}

func TestPurchased(t *testing.T) {
	s, _ := newMemStore(t)
	mustApply(t, s, 4, entries(0,
		ev("1", "u", "bought", "", BehaviorPurchase, t0),
		ev("2", "u", "viewed", "", BehaviorView, t0),
		ev("3", "u", "carted", "", BehaviorCart, t0),
		ev("4", "u", "faved", "", BehaviorFav, t0),
	))
	for _, tc := range []struct {
		user, item string
		want       bool
	}{
		{"u", "bought", true}, {"u", "viewed", false}, {"u", "carted", false}, {"u", "faved", false},
		{"v", "bought", false}, {"u", "nothing", false}, {"u", "bough", false}, {"", "", false},
	} {
		got, err := s.Purchased(tc.user, tc.item)
		if err != nil || got != tc.want {
			t.Errorf("Purchased(%q, %q) = %v, %v; want %v", tc.user, tc.item, got, err, tc.want)
		}
	}
}

func TestScan(t *testing.T) {
	s, _ := newMemStore(t)
	var evs []Event
	for i := range 10 {
		evs = append(evs, ev(fmt.Sprint("e", i), fmt.Sprintf("u%02d", i), fmt.Sprintf("i%02d", i%4), "c", BehaviorView, t0+int64(i)))
	}
	// A user id that extends another must not confuse the ranges.
	evs = append(evs, ev("long", "u03x", "i00", "c", BehaviorCart, t0+100))
	mustApply(t, s, uint64(len(evs)), entries(0, evs...))
	idx, err := UserView.Resolve([]string{"view_count", "cart_count"})
	if err != nil {
		t.Fatal(err)
	}
	scan := func(v *View, lo, hi string) []string {
		t.Helper()
		var ids []string
		err := s.Scan(v, lo, hi, idx, evNow(s), func(r *Row) error {
			if !r.Found || len(r.Values) != len(idx) {
				t.Errorf("row %+v", r)
			}
			if r.ID == "u03x" && (r.Values[0].Int != 0 || r.Values[1].Int != 1) {
				t.Errorf("u03x values = %+v", r.Values)
			}
			if r.ID == "u05" && (r.Values[0].Int != 1 || r.Values[0].EventTS != t0+5) {
				t.Errorf("u05 values = %+v", r.Values)
			}
			ids = append(ids, r.ID)
			return nil
		})
		if err != nil {
			t.Fatalf("Scan(%q, %q): %v", lo, hi, err)
		}
		return ids
	}
	tests := []struct {
		v      *View
		lo, hi string
		want   []string
	}{
		{UserView, "u03", "u06", []string{"u03", "u03x", "u04", "u05"}},
		{UserView, "u04", "u04", nil},
		{UserView, "u08", "", []string{"u08", "u09"}},
		{UserView, "", "u01", []string{"u00"}},
		{UserView, "", "", []string{"u00", "u01", "u02", "u03", "u03x", "u04", "u05", "u06", "u07", "u08", "u09"}},
		{UserView, "v", "", nil},
		{UserView, "u06", "u03", nil}, // lo after hi
		{ItemView, "", "", []string{"i00", "i01", "i02", "i03"}},
		{ItemView, "i01", "i03", []string{"i01", "i02"}},
	}
	for _, tc := range tests {
		if got := scan(tc.v, tc.lo, tc.hi); !slices.Equal(got, tc.want) {
			t.Errorf("Scan(%s, %q, %q) = %v, want %v", tc.v.Name, tc.lo, tc.hi, got, tc.want)
		}
	}
	if n := s.Count(UserView); n != 11 {
		t.Errorf("Count(UserView) = %d, want 11", n)
	}
	if n := s.Count(ItemView); n != 4 {
		t.Errorf("Count(ItemView) = %d, want 4", n)
	}

	// fn's error stops the scan and is returned as is.
	stop := errors.New("stop")
	calls := 0
	err = s.Scan(UserView, "", "", idx, evNow(s), func(*Row) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if err != stop || calls != 3 {
		t.Errorf("Scan with failing fn = %v after %d calls, want stop after 3", err, calls)
	}
}

func TestViews(t *testing.T) {
	for _, name := range []string{"user_features", "item_features"} {
		v, err := defaults.View(name)
		if err != nil || v.Name != name {
			t.Errorf("LookupView(%q) = %v, %v", name, v, err)
		}
	}
	for _, name := range []string{"", "users", "USER_FEATURES"} {
		if _, err := defaults.View(name); !errors.Is(err, ErrUnknownView) {
			t.Errorf("LookupView(%q) error = %v, want ErrUnknownView", name, err)
		}
	}
	if got := defaults.Views; len(got) != 3 || got[0] != UserView || got[1] != ItemView || got[2].Entity != "category" {
		t.Errorf("default views = %v", got)
	}

	idx, err := UserView.Resolve(nil)
	if err != nil || len(idx) != len(UserView.Features) {
		t.Errorf("Resolve(nil) = %v, %v", idx, err)
	}
	for i, j := range idx {
		if i != j {
			t.Errorf("Resolve(nil) = %v, want identity", idx)
		}
	}
	idx, err = ItemView.Resolve([]string{"category_id", "view_count", "category_id"})
	if err != nil || !slices.Equal(idx, []int{6, 0, 6}) {
		t.Errorf("Resolve(category_id, view_count, category_id) = %v, %v", idx, err)
	}
	for _, names := range [][]string{{"nope"}, {"view_count", "recent_items"}, {""}} {
		if _, err := ItemView.Resolve(names); !errors.Is(err, ErrUnknownFeature) {
			t.Errorf("ItemView.Resolve(%q) error = %v, want ErrUnknownFeature", names, err)
		} else if !strings.Contains(err.Error(), ItemView.Name) {
			t.Errorf("error %q does not name the view", err)
		}
	}
	// Every feature name is unique within its view and has a known kind.
	for _, v := range defaults.Views {
		seen := map[string]bool{}
		for _, f := range v.Features {
			if seen[f.Name] || f.Kind.String() == "unknown" || f.Doc == "" {
				t.Errorf("view %s feature %+v is duplicate or incomplete", v.Name, f)
			}
			seen[f.Name] = true
		}
	}
}

func TestBehavior(t *testing.T) {
	tests := []struct {
		in   string
		want Behavior
		ok   bool
	}{
		{"view", BehaviorView, true}, {"pv", BehaviorView, true}, {"cart", BehaviorCart, true},
		{"fav", BehaviorFav, true}, {"purchase", BehaviorPurchase, true}, {"buy", BehaviorPurchase, true},
		{"", 0, false}, {"View", 0, false}, {"click", 0, false}, {"unknown", 0, false},
	}
	for _, tc := range tests {
		got, ok := ParseBehavior(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseBehavior(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	for _, b := range Behaviors() {
		if got, ok := ParseBehavior(b.String()); !ok || got != b {
			t.Errorf("ParseBehavior(%v.String()) = %v, %v", b, got, ok)
		}
	}
	if s := Behavior(9).String(); s != "unknown" {
		t.Errorf("Behavior(9).String() = %q", s)
	}
}

func TestClosed(t *testing.T) {
	checkGoroutines(t)
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, 1, entries(0, ev("a", "u", "i", "c", BehaviorPurchase, t0)))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Apply(2, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
	if _, _, err := s.User("u"); !errors.Is(err, ErrClosed) {
		t.Errorf("User after Close = %v, want ErrClosed", err)
	}
	if _, _, err := s.Item("i"); !errors.Is(err, ErrClosed) {
		t.Errorf("Item after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Get(UserView, []string{"u"}, []int{0}, evNow(s)); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Purchased("u", "i"); !errors.Is(err, ErrClosed) {
		t.Errorf("Purchased after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Popular("", 5, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Popular after Close = %v, want ErrClosed", err)
	}
	if err := s.Scan(UserView, "", "", nil, evNow(s), func(*Row) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Scan after Close = %v, want ErrClosed", err)
	}
	if st := s.Stats(); st.AppliedOffset != 1 {
		t.Errorf("Stats after Close = %+v", st)
	}
}

func TestCorruptStoredData(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs, "db")
	mustApply(t, s, 1, entries(0, ev("a", "good", "i", "c", BehaviorView, t0)))
	for _, k := range [][]byte{userKey("bad"), itemKey("bad")} {
		setRaw(t, s, k, []byte{recordVersion, 1, 2})
	}
	if _, _, err := s.User("bad"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("User(bad) = %v, want ErrCorrupt", err)
	}
	if _, _, err := s.Item("bad"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Item(bad) = %v, want ErrCorrupt", err)
	}
	if _, err := s.Get(UserView, []string{"good", "bad"}, []int{0}, evNow(s)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Get(bad) = %v, want ErrCorrupt", err)
	}
	if err := s.Scan(ItemView, "", "", []int{0}, evNow(s), func(*Row) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Scan over a bad item = %v, want ErrCorrupt", err)
	}
	before := s.Stats()
	if _, err := s.Apply(2, entries(1, ev("b", "bad", "i", "c", BehaviorView, t0))); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Apply touching a bad user = %v, want ErrCorrupt", err)
	}
	if _, err := s.Apply(2, entries(1, ev("b", "u", "bad", "c", BehaviorView, t0))); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Apply touching a bad item = %v, want ErrCorrupt", err)
	}
	if st := s.Stats(); st != before {
		t.Errorf("Stats after failed applies = %+v, want %+v", st, before)
	}

}

// Corrupt metadata makes Open fail; each corruption gets its own store.
func TestCorruptMetadata(t *testing.T) {
	checkGoroutines(t)
	for _, tc := range []struct{ key, val string }{
		{keyApplied, "\x00\x01"},
		{keyStats, "\x01\x02"},
		{keyStats, "\x03\x00\x00\x00\x00\x00"},
		{keyStats, "\x01\x00\x00\x00\x00\x00\x00"},
	} {
		fs := vfs.NewMem()
		s, err := Open("db", Options{FS: fs, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		mustApply(t, s, 1, entries(0, ev("a", "u", "i", "c", BehaviorView, t0)))
		if err := s.db.Set([]byte(tc.key), []byte(tc.val), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s2, err := Open("db", Options{FS: fs, Logger: quietLogger()})
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("Open with %s = %q: err = %v, want ErrCorrupt", tc.key, tc.val, err)
		}
		if err == nil {
			s2.Close()
		}
	}
}

// A failed Apply must leave no trace, also in whatever the store keeps in
// memory about the records it touched.
func TestFailedApplyLeavesNoTrace(t *testing.T) {
	s, _ := newMemStore(t)
	mustApply(t, s, 1, entries(0, ev("a", "u", "i", "c1", BehaviorView, t0)))
	// Entry 2 is at end: the whole batch fails after u and i were updated.
	bad := entries(1,
		ev("b", "u", "i", "c2", BehaviorPurchase, t0+10),
		ev("c", "u", "i", "c2", BehaviorPurchase, t0+20),
	)
	if _, err := s.Apply(2, bad); err == nil {
		t.Fatal("Apply with an entry at end succeeded")
	}
	mustApply(t, s, 3, entries(1, ev("d", "u", "i", "", BehaviorCart, t0+5), ev("e", "w", "j", "", BehaviorView, t0+6)))
	u := mustUser(t, s, "u")
	if u.Count != [numBehaviors]int64{1, 1, 0, 0} || u.LastTSAny != t0+5 || !slices.Equal(recentIDs(u.RecentCategories), []string{"c1"}) {
		t.Errorf("user after failed and good apply = %+v", u)
	}
	it := mustItem(t, s, "i")
	if it.Count != [numBehaviors]int64{1, 1, 0, 0} || it.CategoryID != "c1" {
		t.Errorf("item after failed and good apply = %+v", it)
	}
	if ok, _ := s.Purchased("u", "i"); ok {
		t.Errorf("the failed batch's purchase was recorded")
	}
	if got := scoredIDs(mustPopular(t, s, "c2", 10)); len(got) != 0 {
		t.Errorf("Popular(c2) = %v, want empty", got)
	}
	checkPopIndex(t, s)
	if st := s.Stats(); st.Events != 3 || st.Users != 2 || st.Items != 2 {
		t.Errorf("Stats = %+v", st)
	}
}

// Reads may run concurrently with anything, Close included: a read racing
// Close must return ErrClosed, not crash the process.
func TestCloseDuringReads(t *testing.T) {
	for range 100 {
		s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		mustApply(t, s, 1, entries(0, ev("a", "u", "i", "c", BehaviorView, t0)))
		var wg sync.WaitGroup
		running := make(chan struct{}, 4)
		for range 4 {
			wg.Go(func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("read racing Close panicked: %v", r)
					}
				}()
				for i := 0; ; i++ {
					if i == 10 {
						running <- struct{}{}
					}
					if _, _, err := s.User("u"); err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Errorf("User = %v, want ErrClosed", err)
						}
						return
					}
					if _, err := s.Popular("", 5, nil); err != nil {
						return
					}
				}
			})
		}
		for range 4 {
			<-running
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}

// evNow reads as of the newest event applied, on the event clock.
func evNow(s *Store) ReadTime {
	ts := s.Stats().MaxTS
	return ReadTime{Now: ts, AsOf: ts}
}

// TestBlockCacheHoldsBlocks checks that reads are served from the block
// cache once the memtables are full size: Pebble reserves every memtable's
// memory in the block cache, and a cache of CacheBytes alone was all
// reserved by two memtables, so it held no block at all and every read
// decompressed its blocks from the files again.
func TestBlockCacheHoldsBlocks(t *testing.T) {
	const memtable = 1 << 20
	// Without the window state, whose entries would answer the second
	// read from memory without reading a block.
	s, err := Open(t.TempDir(), Options{Logger: quietLogger(), CacheBytes: 2 * memtable, memTableSize: memtable, WindowCacheBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Several memtables' worth, most of it flushed.
	applyBenchEvents(t, s, rand.New(rand.NewPCG(3, 4)), 40, 1024)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	idx, err := UserView.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = "u" + strconv.Itoa(i)
	}
	read := func() (hits, misses int64) {
		before := s.db.Metrics().BlockCache
		if _, err := s.Get(UserView, ids, idx, evNow(s)); err != nil {
			t.Fatal(err)
		}
		after := s.db.Metrics().BlockCache
		return after.Hits - before.Hits, after.Misses - before.Misses
	}
	// Compactions moving rows to new files between the reads would have
	// the second read new blocks: wait until they are done.
	for deadline := time.Now().Add(10 * time.Second); s.db.Metrics().Compact.NumInProgress > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	read() // warm
	hits, misses := read()
	// A compaction between the reads can move rows to new files, whose
	// blocks are read afresh: most, not all, reads hit.
	if hits == 0 || misses > hits/2 {
		t.Fatalf("second read of the same rows: %d block cache hits, %d misses; want mostly hits", hits, misses)
	}
}

// TestGetReadsOneVersion checks that a batch of features is read from one
// state version: a batch applied while the rows are read changes none of
// them, neither records nor window tiles nor distinct counts.
func TestGetReadsOneVersion(t *testing.T) {
	// The batch applied during the read runs in its own goroutine, and the
	// read goes on once it is committed: an online read pins the published
	// version, so the batch's publication waits for it.
	committed := make(chan struct{}, 4)
	s, err := Open("store", Options{FS: vfs.NewMem(), Logger: quietLogger(), CacheBytes: 4 << 20,
		TestingAfterCommit: func() { committed <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	mustApply(t, s, 2, entries(0,
		ev("e1", "u1", "i1", "c1", BehaviorView, t0),
		ev("e2", "u2", "i1", "c1", BehaviorView, t0)))
	<-committed
	idx, err := UserView.Resolve([]string{"view_count", "view_count_1h", "last_event_ts"})
	if err != nil {
		t.Fatal(err)
	}
	read := func() []Row {
		t.Helper()
		rows, err := s.Get(UserView, []string{"u1", "u2"}, idx, ReadTime{Now: t0 + 2000, AsOf: t0 + 2000})
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	before := read()
	calls := 0
	applied := make(chan error, 1)
	testHookRow = func() {
		if calls++; calls == 2 { // after the first row, before the second
			go func() {
				_, err := s.Apply(4, entries(2,
					ev("e3", "u1", "i2", "c1", BehaviorView, t0+1000),
					ev("e4", "u2", "i2", "c1", BehaviorView, t0+1000)))
				applied <- err
			}()
			select {
			case <-committed:
			case err := <-applied:
				t.Fatalf("Apply: %v before its commit", err)
			}
		}
	}
	t.Cleanup(func() { testHookRow = nil })
	during := read()
	testHookRow = nil
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("hook ran %d times, want 2", calls)
	}
	for r := range during {
		for j := range idx {
			if !valueEqual(during[r].Values[j], before[r].Values[j]) {
				t.Errorf("%s %s read while a batch was applied = %+v, want %+v as before the batch", during[r].ID, UserView.Features[idx[j]].Name, during[r].Values[j], before[r].Values[j])
			}
		}
	}
	after := read()
	for r := range after {
		if got := after[r].Values[0].Int; got != 2 {
			t.Errorf("%s view_count after the batch = %d, want 2", after[r].ID, got)
		}
		if got := after[r].Values[1].Int; got != 2 {
			t.Errorf("%s view_count_1h after the batch = %d, want 2", after[r].ID, got)
		}
	}
}

// TestPinnedVersion checks that a pinned version reads one state version:
// a batch committed to Pebble while a reader holds the version is not seen
// through it (records, purchases, popularity, seen items, counters), its
// publication waits for the release, and the next pin sees it.
func TestPinnedVersion(t *testing.T) {
	s, _ := newMemStore(t)
	mustApply(t, s, 1, entries(0, ev("e1", "u1", "i1", "c1", BehaviorView, t0)))
	v, err := s.Pin()
	if err != nil {
		t.Fatal(err)
	}
	committed := make(chan struct{})
	s.opts.TestingAfterCommit = func() { close(committed) }
	applied := make(chan error, 1)
	go func() {
		_, err := s.Apply(3, entries(1,
			ev("e2", "u1", "i2", "c2", BehaviorPurchase, t0+1000),
			ev("e3", "u2", "i2", "c2", BehaviorView, t0+2000)))
		applied <- err
	}()
	<-committed
	// The batch is in Pebble: the DB itself has it.
	if _, ok, err := getFrom(s.db, userKey("u2")); err != nil || !ok {
		t.Fatalf("u2 in the DB after the commit: found %v, %v; want found", ok, err)
	}
	if _, found, err := v.User("u2"); err != nil || found {
		t.Errorf("pinned version: User(u2) found %v, %v; want not found", found, err)
	}
	if u, _, err := v.User("u1"); err != nil || u.Count[BehaviorView] != 1 || u.Count[BehaviorPurchase] != 0 {
		t.Errorf("pinned version: u1 counts %v, %v; want one view", u.Count, err)
	}
	if _, found, err := v.Item("i2"); err != nil || found {
		t.Errorf("pinned version: Item(i2) found %v, %v; want not found", found, err)
	}
	if b, err := v.Purchased("u1", "i2"); err != nil || b {
		t.Errorf("pinned version: Purchased(u1, i2) = %v, %v; want false", b, err)
	}
	if pop, err := v.Popular("", 10, nil); err != nil || len(pop) != 1 || pop[0].ItemID != "i1" {
		t.Errorf("pinned version: Popular = %v, %v; want i1 alone", pop, err)
	}
	if seen, err := v.SeenItems("u1", t0+5000); err != nil || len(seen) != 1 || !seen["i1"] {
		t.Errorf("pinned version: SeenItems(u1) = %v, %v; want i1 alone", seen, err)
	}
	if st := v.Stats(); st.MaxTS != t0 || st.Events != 1 {
		t.Errorf("pinned version: newest event %d, %d events; want %d, 1", st.MaxTS, st.Events, t0)
	}
	select {
	case err := <-applied:
		t.Fatalf("Apply returned (%v) while a version was pinned: its publication should wait", err)
	case <-time.After(20 * time.Millisecond):
	}
	v.Release()
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.User("u2"); err != nil || !found {
		t.Errorf("after the release: User(u2) found %v, %v; want found", found, err)
	}
	if b, err := s.Purchased("u1", "i2"); err != nil || !b {
		t.Errorf("after the release: Purchased(u1, i2) = %v, %v; want true", b, err)
	}
	if got := s.Stats().MaxTS; got != t0+2000 {
		t.Errorf("after the release: newest event %d, want %d", got, t0+2000)
	}
}

// Open rebuilds the popularity index from the item records, and drops
// the index keys an older version kept in Pebble.
func TestPopularityIndexRebuiltOnOpen(t *testing.T) {
	fs := vfs.NewMem()
	s := openStore(t, fs, "db")
	rng := rand.New(rand.NewPCG(5, 5))
	log := genLog(rng, 400, 10, 30, 4)
	mustApply(t, s, log[len(log)-1].Offset+1, log)
	want := map[string][]Scored{}
	for _, cat := range []string{"", "c0", "c1", "c2", "c3"} {
		want[cat] = mustPopular(t, s, cat, 100)
	}
	if len(want[""]) < 20 {
		t.Fatalf("only %d popular items", len(want[""]))
	}
	// A key of the index an older version wrote.
	if err := s.db.Set(append(slices.Clone(prefixPop), "c0\x00stale"...), nil, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, fs, "db")
	for cat, w := range want {
		if got := mustPopular(t, s, cat, 100); !slices.Equal(got, w) {
			t.Errorf("Popular(%q) after reopening = %v, want %v", cat, got, w)
		}
	}
	checkPopIndex(t, s) // and no key left under the old prefix
}
