// Package kafka feeds the feature store from a Kafka topic instead of the
// embedded event log, and publishes ingested events to that topic.
//
// A Consumer reads the topic in a consumer group (cooperative-sticky) and
// is a source of the updater's apply loop (updater.Apply, the loop the
// embedded log feeds too): each batch is applied with
// featurestore.Store.ApplyWith, so the state changes, the next offset and
// watermark of every partition in the batch, and the batch's dead letters
// commit in one atomic Pebble batch. The loop owns expiry, the freshness
// and apply-duration observations and the batching; the consumer decodes,
// checks watermarks, sends dead letters and keeps the positions. On start
// and on every assignment the consumer resumes from the offsets in Pebble,
// not from the group's committed offsets (those are committed too, after
// the state, for lag monitoring only). The result is exactly-once state
// without Kafka transactions: a crash loses at most a batch that was never
// committed, which is then read again.
//
// Rebalances wait for the records in flight (kgo.BlockRebalanceOnPoll;
// when one is waiting, the consumer stops polling until every record
// polled is committed, then allows it), so a revoked partition's records
// are either applied with its offset or not at all. A record whose offset is below the stored offset is skipped; a
// record past it (a fetch that did not start where Pebble says) makes the
// consumer seek back once, so nothing is skipped.
//
// Bad records (undecodable, invalid, older than the partition's watermark)
// never stop a partition: they are produced to the dead-letter topic with
// headers naming the reason and the source partition and offset (before
// the batch commits: at least once), kept as dead letters in the store
// (under a key derived from their position: exactly once), and counted.
//
// The watermark is per partition (newest event time of the partition minus
// the allowed lateness), stored with the partition's offset, so which
// records are late does not depend on how partitions interleave, and a
// partition can move to another process with its watermark.
//
// The next records are polled while a batch applies (so the client keeps
// fetching and what arrives during a long batch is in the next one), up to
// MaxBatch records; then polling waits for the loop. The client buffers at
// most one fetch per broker (FetchMaxBytes), so a slow updater slows the
// fetches and memory stays bounded (about two batches and a fetch).
//
// A Producer publishes events keyed by user id (so a user's events stay in
// order in one partition), protobuf-encoded, with acks=all and the
// idempotent producer, and returns once the broker has acknowledged.
package kafka
