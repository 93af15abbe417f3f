// Package synth generates deterministic synthetic e-commerce behavior
// events shaped like the Taobao UserBehavior log, for demos and large
// benchmarks of the recommendation backend.
//
//	g, err := synth.New(synth.Config{Seed: 7, Events: 5_000_000})
//	for e, ok := g.Next(); ok; e, ok = g.Next() { ... }
//	// or: synth.WriteJSONL(w, g) / synth.WriteTaobaoCSV(w, g)
//
// Model. New builds lookup tables once (O(Users+Items+Categories) memory,
// about 40 bytes per item; nothing grows with Events):
//
//   - Items have Zipf(ZipfS) popularity by rank; ranks are assigned by a
//     seeded permutation, so i1 is not the most popular item.
//   - Each item's category is a seeded hash of the item number drawn from a
//     skewed category-size distribution (rank^-0.8, permuted).
//   - Users have skewed activity, weight (rank+10)^-0.9 over a permutation,
//     and 1-3 favourite categories derived from a hash of the user number.
//
// Events come from sessions. A session picks a user by activity and one of
// the user's favourite categories, then a geometric number of views (mean
// 5, capped at 64). Each view re-views the previous item with p=0.1, else
// picks an item by popularity within the session category with p=0.8, else
// by global popularity. After a view: fav with FavRate, cart with CartRate,
// and after a cart a purchase with PurchaseRate. Gaps are 2-42s between
// views (plus up to 4 min more with p=0.15), 1-21s before a fav/cart and 5-125s
// before a purchase.
//
// Time. Session k starts at Start + Span*(a_k+u)/Events, where a_k is the
// number of events allocated to earlier sessions and u is uniform in
// [0,1), so starts never decrease and sessions fill the span evenly.
// Whole sessions are generated up front; a min-heap of open sessions merges
// their events, so Next returns non-decreasing TS. Sessions are cut off at
// Start+Span (like a real log window) and the last one is truncated so that
// exactly Events events are produced. Intra-session gaps are scaled down
// for spans shorter than an hour and for configs so dense that more than
// about 1024 sessions would be open at once, which bounds the heap.
//
// Determinism. All randomness comes from one math/rand/v2 PCG seeded from
// Seed, plus splitmix64 hashes; hot-path decisions are integer-only, and
// table building uses a pure-Go log/exp with FMA fusion prevented, so a
// Config yields the same sequence on every run and architecture. The
// sequence may change between versions of this package (TestGolden pins it).
package synth
