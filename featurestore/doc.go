// Package featurestore is the Pebble-backed online store of the recommender:
// per-user and per-item features, the item popularity index, the event dedup
// set and the offset of the last applied log entry.
//
// # Model
//
// The store is written by one goroutine (the updater) through Apply, which
// takes a batch of log entries and commits, in one atomic Pebble batch, every
// state change they cause together with the offset one past the last entry.
// After a crash the store therefore reflects exactly the entries below
// AppliedOffset, and the updater resumes from there: state is exactly once
// with respect to the log. Duplicate event ids are recognised through the
// dedup set and skipped, so a client that resends a batch changes nothing.
//
// Reads (Users, Items, Popular, Scan*) go straight to Pebble and may run
// concurrently with Apply; they see the state of some committed batch.
//
// The incremental models (featurestore/models) learn inside Apply through
// the small Learner interface the store declares (learner.go): the store
// hands each event and the user's and item's records to it, and it writes
// its own records into the same batch. The store never imports them; the
// recommender (featurestore/recommend) reads the store and the models.
//
// # Caveats
//
// Lifetime counts sit beside windowed ones built from tiles; Expire
// (expire.go) removes old tiles, seen records, dedup entries and dead
// letters by day, and the records of entities idle past the retention.
// Popularity scores use forward exponential decay in
// event time, so ranking is stable whatever the read time; the absolute
// score is reported relative to the newest event time seen.
package featurestore
