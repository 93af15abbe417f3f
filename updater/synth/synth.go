package synth

import (
	"math"
	"math/rand/v2"
	"time"
)

// Event is one generated behavior event.
type Event struct {
	UserID     string // "u<N>", N in [1, Users]
	ItemID     string // "i<N>", N in [1, Items]
	CategoryID string // "c<N>", N in [1, Categories]; every item has exactly one fixed category
	Behavior   string // "view", "cart", "fav" or "purchase"
	TS         int64  // event time, Unix milliseconds
}

// Behavior codes, indexing behaviorNames/taobaoNames.
const (
	behView uint8 = iota
	behCart
	behFav
	behPurchase
)

var (
	behaviorNames = [...]string{"view", "cart", "fav", "purchase"}
	taobaoNames   = [...]string{"pv", "cart", "fav", "buy"}
)

// Model constants (see doc.go).
const (
	userSkewS      = 0.9  // user activity weight (rank+10)^-0.9
	userSkewOffset = 10   //
	catSkewS       = 0.8  // category size weight rank^-0.8
	continueProb   = 0.8  // another view follows: geometric, mean 5 views
	meanViews      = 5.0  //
	maxViews       = 64   // hard cap on views per session
	localProb      = 0.8  // view drawn from the session category (else global)
	revisitProb    = 0.1  // view repeats the previous item of the session
	longDwellProb  = 0.15 // a dwell gets an extra long pause
	maxActive      = 1024 // target bound on concurrently open sessions

	dwellBaseMs  = 2_000   // between two views: 2s + U[0,40s) (+U[0,240s) w.p. 0.15)
	dwellRangeMs = 40_000  //
	dwellLongMs  = 240_000 //
	actBaseMs    = 1_000   // view -> fav / cart: 1s + U[0,20s)
	actRangeMs   = 20_000  //
	buyBaseMs    = 5_000   // cart -> purchase: 5s + U[0,120s)
	buyRangeMs   = 120_000 //
)

// pending is a generated but not yet returned event of an open session.
type pending struct {
	ts   int64
	item int32
	beh  uint8
}

// session is one open session; its events are pre-generated in ts order.
type session struct {
	seq  uint64
	user int32
	pos  int
	evs  []pending
}

func (s *session) ts() int64 { return s.evs[s.pos].ts }

// Generator produces events in non-decreasing event-time order,
// deterministically for a given Config (same Config => identical sequence,
// across runs and machines). It is not safe for concurrent use.
type Generator struct {
	cfg Config
	src rand.PCG

	total, emitted, alloc int
	lo, hi                int64   // valid ts range [lo, hi), Unix ms
	startSpan             float64 // session starts fall in [lo, lo+startSpan) = [lo, hi)
	nextStart             int64   // start time of the next session
	seq                   uint64

	// popularity tables
	users    aliasTable // user activity over ranks
	userPerm []int32    // rank -> user
	items    aliasTable // global item popularity over ranks
	itemPerm []int32    // rank -> item
	itemCat  []int32    // item -> category
	catSize  aliasTable // category size distribution over ranks
	catPerm  []int32    // rank -> category
	catStart []int32    // CSR: items of category c are catItems[catStart[c]:catStart[c+1]]
	catItems []int32
	catThr   []uint32 // per-category alias tables, local indices, same layout as catItems
	catAlias []int32
	favSalt  uint64

	userIDs, itemIDs, catIDs idTable

	// integer thresholds / durations (ms) for the hot path
	cartThr, favThr, buyThr, contThr, localThr, revisitThr, longThr uint64
	dwellBase, dwellRange, dwellLong                                int64
	actBase, actRange, buyBase, buyRange                            int64

	heap []heapEntry
	free []*session
}

// New applies defaults, validates the config and builds the generator's
// lookup tables (O(Items + Users + Categories) time and memory).
func New(cfg Config) (*Generator, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Generator{cfg: cfg, total: cfg.Events}
	g.src.Seed(cfg.Seed, mix(cfg.Seed^golden))
	g.favSalt = mix(cfg.Seed ^ 0xF00D_CAFE_0000_0001)

	g.buildTables()
	g.userIDs = newIDTable('u', cfg.Users)
	g.itemIDs = newIDTable('i', cfg.Items)
	g.catIDs = newIDTable('c', cfg.Categories)
	g.initTiming()
	return g, nil
}

func (g *Generator) u64() uint64 { return g.src.Uint64() }

// intn returns a value in [0, n) for 0 <= n < 2^32 (0 when n <= 0).
func (g *Generator) intn(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return int64((g.u64() >> 32) * uint64(n) >> 32)
}

func (g *Generator) perm(n int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(i)
	}
	for i := n - 1; i > 0; i-- {
		j := g.intn(int64(i) + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}

func (g *Generator) buildTables() {
	cfg := &g.cfg
	var sc aliasScratch

	// Users: activity skew over a random permutation.
	w := make([]float64, max(cfg.Users, cfg.Items))
	for r := 0; r < cfg.Users; r++ {
		w[r] = zipfWeight(float64(r+userSkewOffset), userSkewS)
	}
	g.users = newAliasTable(w[:cfg.Users], &sc)
	g.userPerm = g.perm(cfg.Users)

	// Categories: skewed sizes over a random permutation.
	cw := make([]float64, cfg.Categories)
	for r := range cw {
		cw[r] = zipfWeight(float64(r+1), catSkewS)
	}
	g.catSize = newAliasTable(cw, &sc)
	g.catPerm = g.perm(cfg.Categories)

	// Items: Zipf popularity over a random permutation.
	for r := 0; r < cfg.Items; r++ {
		w[r] = zipfWeight(float64(r+1), cfg.ZipfS)
	}
	w = w[:cfg.Items]
	g.items = newAliasTable(w, &sc)
	g.itemPerm = g.perm(cfg.Items)

	// Item -> category by a seeded hash of the item number, drawn from the
	// skewed category-size distribution.
	catSalt := mix(cfg.Seed ^ 0xC47E_6042_0000_0002)
	g.itemCat = make([]int32, cfg.Items)
	g.catStart = make([]int32, cfg.Categories+1)
	for i := range g.itemCat {
		c := g.catPerm[g.catSize.sample(mix(catSalt+uint64(i)*golden))]
		g.itemCat[i] = c
		g.catStart[c+1]++
	}
	for c := 0; c < cfg.Categories; c++ {
		g.catStart[c+1] += g.catStart[c]
	}

	// Per-category item lists (ascending item number) with popularity
	// weights, then one alias table per category.
	itemW := make([]float64, cfg.Items)
	for r, it := range g.itemPerm {
		itemW[it] = w[r]
	}
	g.catItems = make([]int32, cfg.Items)
	fill := make([]int32, cfg.Categories)
	copy(fill, g.catStart)
	for i, c := range g.itemCat {
		g.catItems[fill[c]] = int32(i)
		fill[c]++
	}
	for j, it := range g.catItems {
		w[j] = itemW[it] // reuse w: now in catItems order
	}
	g.catThr = make([]uint32, cfg.Items)
	g.catAlias = make([]int32, cfg.Items)
	for c := 0; c < cfg.Categories; c++ {
		a, b := g.catStart[c], g.catStart[c+1]
		if a < b {
			buildAlias(w[a:b], g.catThr[a:b], g.catAlias[a:b], &sc)
		}
	}
}

func (g *Generator) initTiming() {
	cfg := &g.cfg
	g.lo = ceilMilli(cfg.Start)
	g.hi = ceilMilli(cfg.Start.Add(cfg.Span)) // exclusive
	spanMs := float64(g.hi - g.lo)

	g.startSpan = spanMs

	// Scale intra-session gaps down for short spans, and for very dense
	// configs so that about maxActive sessions are open at once at most
	// (this keeps memory independent of Events).
	fav, cart, buy := cfg.FavRate, cfg.CartRate, cfg.PurchaseRate
	meanDwell := dwellBaseMs + dwellRangeMs/2 + float64(longDwellProb*dwellLongMs/2)
	meanAct := actBaseMs + actRangeMs/2.0
	meanBuy := buyBaseMs + buyRangeMs/2.0
	perView := float64(fav*meanAct) + float64(cart*(meanAct+float64(buy*meanBuy)))
	meanDur := float64((meanViews-1)*meanDwell) + float64(meanViews*perView)
	meanEvents := float64(meanViews * (1 + fav + float64(cart*(1+buy))))
	sessions := float64(g.total) / meanEvents
	active := float64(sessions/g.startSpan) * meanDur
	scale := math.Min(1, spanMs/float64(time.Hour/time.Millisecond))
	if active > maxActive {
		scale = math.Min(scale, maxActive/active)
	}
	sc := func(ms float64) int64 { return int64(ms * scale) }
	g.dwellBase, g.dwellRange, g.dwellLong = sc(dwellBaseMs), sc(dwellRangeMs), sc(dwellLongMs)
	g.actBase, g.actRange = sc(actBaseMs), sc(actRangeMs)
	g.buyBase, g.buyRange = sc(buyBaseMs), sc(buyRangeMs)

	g.cartThr = probThreshold(cart)
	g.favThr = probThreshold(fav)
	g.buyThr = probThreshold(buy)
	g.contThr = probThreshold(continueProb)
	g.localThr = probThreshold(localProb)
	g.revisitThr = probThreshold(revisitProb)
	g.longThr = probThreshold(longDwellProb)

	g.nextStart = g.lo
	g.advanceStart()
}

// ceilMilli returns the smallest Unix millisecond not before t.
func ceilMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		ms++
	}
	return ms
}

// advanceStart places the next session start proportionally to the number
// of events already allocated to sessions, plus jitter: start times are
// non-decreasing and the last session starts before hi.
func (g *Generator) advanceStart() {
	u := float64(float64(g.u64()>>11) * 0x1p-53) // no FMA fusion below
	ns := g.lo + int64(g.startSpan*(float64(g.alloc)+u)/float64(g.total))
	ns = min(max(ns, g.nextStart), g.hi-1)
	g.nextStart = ns
}

// Next returns the next event in non-decreasing TS order, or false once
// cfg.Events events have been produced. In steady state it does not allocate.
func (g *Generator) Next() (Event, bool) {
	if g.emitted >= g.total {
		return Event{}, false
	}
	for g.alloc < g.total && (len(g.heap) == 0 || g.nextStart <= g.heap[0].ts) {
		g.startSession()
	}
	top := &g.heap[0]
	s := top.s
	p := s.evs[s.pos]
	user := s.user
	s.pos++
	if s.pos == len(s.evs) {
		g.popHeap()
		g.free = append(g.free, s)
	} else {
		top.ts = s.evs[s.pos].ts
		g.siftDown(0)
	}
	g.emitted++
	return Event{
		UserID:     g.userIDs.get(user),
		ItemID:     g.itemIDs.get(p.item),
		CategoryID: g.catIDs.get(g.itemCat[p.item]),
		Behavior:   behaviorNames[p.beh],
		TS:         p.ts,
	}, true
}

// startSession pre-generates one session starting at g.nextStart, pushes
// it on the heap and schedules the next session start.
func (g *Generator) startSession() {
	var s *session
	if n := len(g.free); n > 0 {
		s = g.free[n-1]
		g.free = g.free[:n-1]
	} else {
		s = &session{evs: make([]pending, 0, 32)}
	}
	s.seq, s.pos, s.evs = g.seq, 0, s.evs[:0]
	g.seq++
	user := g.userPerm[g.users.sample(g.u64())]
	s.user = user
	cat := g.sessionCategory(user)

	views := 1
	for views < maxViews && g.u64() < g.contThr {
		views++
	}
	// Events past the end of the window are cut off, as in a real log
	// window; the first event always fits because nextStart < hi.
	t, end := g.nextStart, g.hi
	emit := func(item int32, beh uint8) bool {
		if t >= end {
			return false
		}
		s.evs = append(s.evs, pending{ts: t, item: item, beh: beh})
		return true
	}
	prev := int32(-1)
session:
	for v := 0; v < views; v++ {
		if v > 0 {
			t += g.dwellBase + g.intn(g.dwellRange)
			if g.u64() < g.longThr {
				t += g.intn(g.dwellLong)
			}
		}
		var item int32
		switch {
		case prev >= 0 && g.u64() < g.revisitThr:
			item = prev
		case cat >= 0 && g.u64() < g.localThr:
			a, b := g.catStart[cat], g.catStart[cat+1]
			item = g.catItems[a+aliasPick(g.catThr[a:b], g.catAlias[a:b], g.u64())]
		default:
			item = g.itemPerm[g.items.sample(g.u64())]
		}
		prev = item
		if !emit(item, behView) {
			break session
		}
		if g.u64() < g.favThr {
			t += g.actBase + g.intn(g.actRange)
			if !emit(item, behFav) {
				break session
			}
		}
		if g.u64() < g.cartThr {
			t += g.actBase + g.intn(g.actRange)
			if !emit(item, behCart) {
				break session
			}
			if g.u64() < g.buyThr {
				t += g.buyBase + g.intn(g.buyRange)
				if !emit(item, behPurchase) {
					break session
				}
			}
		}
	}
	if rem := g.total - g.alloc; len(s.evs) > rem {
		s.evs = s.evs[:rem]
	}
	g.alloc += len(s.evs)
	g.pushHeap(s)
	if g.alloc < g.total {
		g.advanceStart()
	}
}

// sessionCategory picks one of the user's 1-3 favourite categories (a
// seeded hash of the user number, drawn from the category-size
// distribution), or -1 if that category has no items.
func (g *Generator) sessionCategory(user int32) int32 {
	h := mix(g.favSalt ^ (uint64(user) * golden))
	j := g.intn(int64(1 + h%3))
	c := g.catPerm[g.catSize.sample(mix(h+uint64(j+1)*golden))]
	if g.catStart[c] == g.catStart[c+1] {
		return -1
	}
	return c
}

// Min-heap of open sessions keyed by (next event ts, session seq). Keys are
// stored inline so comparisons do not chase pointers.

type heapEntry struct {
	ts  int64
	seq uint64
	s   *session
}

func (a *heapEntry) less(b *heapEntry) bool {
	return a.ts < b.ts || (a.ts == b.ts && a.seq < b.seq)
}

func (g *Generator) pushHeap(s *session) {
	h := append(g.heap, heapEntry{ts: s.ts(), seq: s.seq, s: s})
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(&h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	g.heap = h
}

func (g *Generator) popHeap() {
	h := g.heap
	n := len(h) - 1
	h[0] = h[n]
	h[n] = heapEntry{}
	g.heap = h[:n]
	if n > 0 {
		g.siftDown(0)
	}
}

func (g *Generator) siftDown(i int) {
	h := g.heap
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h[r].less(&h[l]) {
			m = r
		}
		if !h[m].less(&h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
