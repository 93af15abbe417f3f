// Package updater turns behavior events into feature-store state, exactly
// once and in log order.
//
// Ingest validates events (Normalize), gives events without an id a
// deterministic one derived from their content, and appends the valid ones
// to the durable event log; it returns once they are synced. Run tails the
// log from the store's applied offset and applies entries in batches; each
// batch commits its state changes and the new offset atomically, so after a
// crash the updater resumes exactly where the store left off, and events
// whose id was already applied are skipped. Together: every acknowledged
// event is applied exactly once.
//
// One apply loop (Apply) serves every source of events: the embedded log
// (Run) and a Kafka topic (updater/kafka) implement the small Source
// interface (the next batch of decoded entries and dead letters with the
// position after them; a call once it is committed). The loop commits each
// batch with its position and dead letters in one store batch, reads and
// decodes the next one while it applies, waits while the disk is nearly
// full, observes the apply duration and the freshness, expires once a day
// at the day's start, and then lets the embedded log truncate what is
// older than the retention (marks kept in the log, so that a server
// restarted every day still truncates). The event-time rules stay with the
// sources: the embedded log's watermark is checked at ingest in log order,
// a topic's per partition as its records are decoded.
//
// The decoders (DecodeJSONEvent, DecodeTaobaoCSV) turn outside input into
// events; they never panic and name the offending field in their errors.
package updater
