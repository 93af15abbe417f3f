package synth

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func mustNew(t testing.TB, cfg Config) *Generator {
	t.Helper()
	g, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return g
}

func take(g *Generator, n int) []Event {
	out := make([]Event, 0, n)
	for len(out) < n {
		e, ok := g.Next()
		if !ok {
			break
		}
		out = append(out, e)
	}
	return out
}

func TestDefaults(t *testing.T) {
	var c Config
	c.EnsureDefaults()
	want := Config{
		Seed: 1, Users: 10_000, Items: 50_000, Categories: 500, Events: 1_000_000,
		Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Span: 24 * time.Hour,
		ZipfS: 1.1, CartRate: 0.06, FavRate: 0.035, PurchaseRate: 0.35,
	}
	if c != want {
		t.Fatalf("defaults = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	// Non-zero fields are kept.
	c2 := Config{Users: 7, ZipfS: 2}
	c2.EnsureDefaults()
	if c2.Users != 7 || c2.ZipfS != 2 {
		t.Fatalf("EnsureDefaults overwrote set fields: %+v", c2)
	}
}

func TestDeterminism(t *testing.T) {
	cfg := Config{Seed: 42, Events: 50_000}
	a := take(mustNew(t, cfg), 10_000)
	b := take(mustNew(t, cfg), 10_000)
	if len(a) != 10_000 || len(b) != 10_000 {
		t.Fatalf("short sequences: %d %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("event %d differs: %+v vs %+v", i, a[i], b[i])
		}
	}
	cfg.Seed = 43
	c := take(mustNew(t, cfg), 10_000)
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same > 100 {
		t.Fatalf("different seed produced %d identical events out of 10000", same)
	}
}

// TestGolden pins the start of the default sequence so that accidental
// changes to the model (or platform-dependent arithmetic) are noticed.
func TestGolden(t *testing.T) {
	g := mustNew(t, Config{})
	var h uint64 = 14695981039346656037
	for _, e := range take(g, 100_000) {
		for _, s := range []string{e.UserID, e.ItemID, e.CategoryID, e.Behavior, strconv.FormatInt(e.TS, 10)} {
			for i := 0; i < len(s); i++ {
				h = (h ^ uint64(s[i])) * 1099511628211
			}
			h = (h ^ 0xff) * 1099511628211
		}
	}
	want := goldenHash
	if h != want {
		t.Errorf("golden FNV hash of the first 100k default events = %#x, want %#x", h, want)
	}
}

const goldenHash uint64 = 0x33903b84abc3b1b2

func TestOrderRangesAndCount(t *testing.T) {
	for _, cfg := range []Config{
		{Events: 200_000},
		{Seed: 7, Users: 50, Items: 300, Categories: 40, Events: 30_000, Span: time.Minute, ZipfS: 1.5},
		{Seed: 9, Users: 1, Items: 1, Categories: 1, Events: 1000, Span: time.Millisecond},
		{Seed: 3, Items: 20, Categories: 100, Events: 5000}, // many empty categories
		{Seed: 5, Events: 300_000, Span: 10 * time.Second},  // very dense
		{Seed: 11, Events: 17, Start: time.Date(2017, 11, 25, 0, 0, 0, 123456, time.UTC), Span: 9 * 24 * time.Hour},
	} {
		g := mustNew(t, cfg)
		cfg.EnsureDefaults()
		lo, hi := cfg.Start, cfg.Start.Add(cfg.Span)
		itemCat := map[string]string{}
		n := 0
		var prev int64 = math.MinInt64
		for {
			e, ok := g.Next()
			if !ok {
				break
			}
			n++
			if e.TS < prev {
				t.Fatalf("cfg %+v: ts decreased at event %d: %d < %d", cfg, n, e.TS, prev)
			}
			prev = e.TS
			ts := time.UnixMilli(e.TS)
			if ts.Before(lo) || !ts.Before(hi) {
				t.Fatalf("cfg %+v: ts %v outside [%v, %v)", cfg, ts, lo, hi)
			}
			checkID(t, e.UserID, 'u', cfg.Users)
			checkID(t, e.ItemID, 'i', cfg.Items)
			checkID(t, e.CategoryID, 'c', cfg.Categories)
			if c, ok := itemCat[e.ItemID]; ok && c != e.CategoryID {
				t.Fatalf("item %s has categories %s and %s", e.ItemID, c, e.CategoryID)
			}
			itemCat[e.ItemID] = e.CategoryID
			switch e.Behavior {
			case "view", "cart", "fav", "purchase":
			default:
				t.Fatalf("bad behavior %q", e.Behavior)
			}
		}
		if n != cfg.Events {
			t.Fatalf("cfg %+v: produced %d events, want %d", cfg, n, cfg.Events)
		}
		if _, ok := g.Next(); ok {
			t.Fatalf("Next returned true after exhaustion")
		}
		if len(g.heap) > 4*maxActive {
			t.Errorf("cfg %+v: %d sessions open at the end", cfg, len(g.heap))
		}
	}
}

func checkID(t *testing.T, id string, prefix byte, max int) {
	t.Helper()
	if len(id) < 2 || id[0] != prefix {
		t.Fatalf("id %q lacks prefix %c", id, prefix)
	}
	n, err := strconv.Atoi(id[1:])
	if err != nil || n < 1 || n > max || strconv.Itoa(n) != id[1:] {
		t.Fatalf("id %q out of range [1, %d]", id, max)
	}
}

func TestBehaviorMixAndSkew(t *testing.T) {
	g := mustNew(t, Config{Seed: 3, Events: 300_000})
	counts := map[string]int{}
	items := map[string]int{}
	users := map[string]int{}
	for {
		e, ok := g.Next()
		if !ok {
			break
		}
		counts[e.Behavior]++
		users[e.UserID]++
		if e.Behavior == "view" {
			items[e.ItemID]++
		}
	}
	v, c, f, p := counts["view"], counts["cart"], counts["fav"], counts["purchase"]
	t.Logf("view=%d cart=%d fav=%d purchase=%d distinct items viewed=%d users=%d", v, c, f, p, len(items), len(users))
	total := float64(v + c + f + p)
	if float64(v)/total < 0.8 {
		t.Errorf("views are only %.1f%% of events", 100*float64(v)/total)
	}
	if p > c || c == 0 || f == 0 || p == 0 {
		t.Errorf("implausible funnel: cart=%d fav=%d purchase=%d", c, f, p)
	}
	if r := float64(c) / float64(v); r < 0.04 || r > 0.08 {
		t.Errorf("cart/view = %.3f, want about 0.06", r)
	}
	if r := float64(p) / float64(c); r < 0.3 || r > 0.4 {
		t.Errorf("purchase/cart = %.3f, want about 0.35", r)
	}
	// Popularity is skewed but the top item is not i1.
	maxN, top := 0, ""
	for id, n := range items {
		if n > maxN {
			maxN, top = n, id
		}
	}
	if float64(maxN)/float64(v) < 0.005 {
		t.Errorf("top item has only %d of %d views; popularity not skewed", maxN, v)
	}
	if len(items) < 5000 {
		t.Errorf("only %d distinct items viewed", len(items))
	}
	t.Logf("top item %s with %d views", top, maxN)
}

func TestValidate(t *testing.T) {
	valid := Config{}
	valid.EnsureDefaults()
	cases := []struct {
		field string
		mut   func(*Config)
	}{
		{"Users", func(c *Config) { c.Users = 0 }},
		{"Users", func(c *Config) { c.Users = -3 }},
		{"Items", func(c *Config) { c.Items = -1 }},
		{"Categories", func(c *Config) { c.Categories = 0 }},
		{"Events", func(c *Config) { c.Events = -1 }},
		{"Span", func(c *Config) { c.Span = 0 }},
		{"Span", func(c *Config) { c.Span = -time.Hour }},
		{"ZipfS", func(c *Config) { c.ZipfS = 1 }},
		{"ZipfS", func(c *Config) { c.ZipfS = 0.5 }},
		{"ZipfS", func(c *Config) { c.ZipfS = math.NaN() }},
		{"CartRate", func(c *Config) { c.CartRate = 1.5 }},
		{"FavRate", func(c *Config) { c.FavRate = -0.1 }},
		{"PurchaseRate", func(c *Config) { c.PurchaseRate = math.NaN() }},
	}
	for _, tc := range cases {
		c := valid
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Validate with bad %s: err = %v", tc.field, err)
		}
	}
	// New applies defaults for zero values but rejects negative ones.
	if _, err := New(Config{Users: -1, ZipfS: 0.9}); err == nil ||
		!strings.Contains(err.Error(), "Users") || !strings.Contains(err.Error(), "ZipfS") {
		t.Errorf("New should report all bad fields, got %v", err)
	}
	for _, r := range []float64{0.5, 1} {
		c := valid
		c.CartRate = r
		if err := c.Validate(); err != nil {
			t.Errorf("CartRate %v rejected: %v", r, err)
		}
	}
}

func TestWriteJSONL(t *testing.T) {
	cfg := Config{Seed: 5, Events: 1000}
	want := take(mustNew(t, cfg), 1000)
	var buf bytes.Buffer
	n, err := WriteJSONL(&buf, mustNew(t, cfg))
	if err != nil || n != 1000 {
		t.Fatalf("WriteJSONL = %d, %v", n, err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1000 {
		t.Fatalf("%d lines", len(lines))
	}
	for i, line := range lines {
		var got struct {
			UserID     string `json:"user_id"`
			ItemID     string `json:"item_id"`
			CategoryID string `json:"category_id"`
			Behavior   string `json:"behavior"`
			TS         int64  `json:"ts"`
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("line %d %q: %v", i, line, err)
		}
		if e := (Event{got.UserID, got.ItemID, got.CategoryID, got.Behavior, got.TS}); e != want[i] {
			t.Fatalf("line %d = %+v, want %+v", i, e, want[i])
		}
	}
	// Exact key order / formatting.
	e := want[0]
	exp := `{"user_id":"` + e.UserID + `","item_id":"` + e.ItemID + `","category_id":"` + e.CategoryID +
		`","behavior":"` + e.Behavior + `","ts":` + strconv.FormatInt(e.TS, 10) + `}`
	if lines[0] != exp {
		t.Fatalf("line 0 = %s, want %s", lines[0], exp)
	}
}

func TestWriteTaobaoCSV(t *testing.T) {
	cfg := Config{Seed: 6, Events: 2000}
	want := take(mustNew(t, cfg), 2000)
	var buf bytes.Buffer
	n, err := WriteTaobaoCSV(&buf, mustNew(t, cfg))
	if err != nil || n != 2000 {
		t.Fatalf("WriteTaobaoCSV = %d, %v", n, err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2000 {
		t.Fatalf("%d records", len(recs))
	}
	names := map[string]string{"view": "pv", "cart": "cart", "fav": "fav", "purchase": "buy"}
	seen := map[string]bool{}
	for i, r := range recs {
		e := want[i]
		if len(r) != 5 {
			t.Fatalf("record %d has %d fields", i, len(r))
		}
		if r[0] != e.UserID[1:] || r[1] != e.ItemID[1:] || r[2] != e.CategoryID[1:] ||
			r[3] != names[e.Behavior] || r[4] != strconv.FormatInt(e.TS/1000, 10) {
			t.Fatalf("record %d = %v, want %+v", i, r, e)
		}
		for _, f := range r[:3] {
			if _, err := strconv.ParseUint(f, 10, 64); err != nil {
				t.Fatalf("record %d: non-numeric id %q", i, f)
			}
		}
		seen[r[3]] = true
	}
	if !seen["pv"] {
		t.Errorf("no pv records")
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("boom")
	}
	w.after--
	return len(p), nil
}

func TestWriteError(t *testing.T) {
	g := mustNew(t, Config{Events: 100_000})
	if _, err := WriteJSONL(&failWriter{after: 1}, g); err == nil {
		t.Fatal("expected write error")
	}
	// Flush error on small outputs is reported too.
	g = mustNew(t, Config{Events: 3})
	if n, err := WriteTaobaoCSV(&failWriter{}, g); err == nil || n != 3 {
		t.Fatalf("WriteTaobaoCSV = %d, %v; want 3, error", n, err)
	}
}

func TestOneMillionFast(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	start := time.Now()
	g := mustNew(t, Config{})
	n := 0
	for {
		if _, ok := g.Next(); !ok {
			break
		}
		n++
	}
	el := time.Since(start)
	t.Logf("1M default events in %v, max open sessions %d", el, cap(g.heap))
	if n != 1_000_000 {
		t.Fatalf("n = %d", n)
	}
}

func BenchmarkNew(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(Config{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNext(b *testing.B) {
	b.ReportAllocs()
	g := mustNew(b, Config{})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := g.Next(); !ok {
			b.StopTimer()
			g = mustNew(b, Config{})
			b.StartTimer()
		}
	}
}
