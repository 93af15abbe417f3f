// Package eval is the prequential (interleaved test-then-train) evaluation
// of recommendations behind `recsys eval`.
//
// Run replays events in event-time order. After the warm-up share of the
// time span, before each target event (cart, fav, purchase; views
// separately, on a sample) is ingested, every method is asked for the
// user's top K, and the rank of the target item is recorded; then the
// event is ingested everywhere. Two variants: discovery (the user's
// already touched items are excluded, and targets on them skipped) and
// re-engagement (they are allowed).
//
// Methods are the store's (its single candidate sources and the full
// system, in a live store and in one whose models freeze after the
// warm-up) and three baselines a practitioner would build in an
// afternoon, computed here from exact histories: recent (the user's own
// items, newest first), itemknn (item-kNN cosine) and als (implicit ALS
// with fold-in), the last two rebuilt every day of event time.
//
// Re-engagement is reported twice on the same targets: with the items the
// user bought dropped from every method's list (the server's default) and
// kept. With Options.Delays, full is also asked of one store per delay d
// (full@d) that applies each event only once the replay has reached a
// target d newer: the freshness curve. It lags the whole store (features,
// models, seen sets, its clock), not the models alone.
//
// Metrics are HR@K, NDCG@K and MRR with 95% percentile-bootstrap
// intervals; the resamples of targets are shared by every method of a
// variant, so that the paired difference full − method has an interval of
// its own. Everything is deterministic for a given seed.
package eval
