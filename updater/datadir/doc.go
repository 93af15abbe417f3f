// Package datadir opens a recsys data dir: the stateful core that `recsys
// serve`, `replay --data.dir`, `kafka rebuild` and the benchmarks share.
//
// A data dir holds
//
//	recsys.lock  an exclusive flock held by the process that serves the dir, with its pid
//	log/         the durable event log (updater/eventlog): the source of truth
//	state/       the feature store (Pebble), with the log offset it has applied
//
// Open takes the lock (a second process is refused with a message naming
// the owner; the lock goes with the process, so a crash leaves nothing to
// clean up), opens the log and the store, checks that the store is not
// ahead of the log (a log and a state from different runs), and returns the
// Updater between them. With OutsideSource (a Kafka topic feeds the store)
// the log still exists but holds nothing, and derived event ids keep the
// whole dedup horizon, since a partition may lag the others by any time.
package datadir
