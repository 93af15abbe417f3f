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
// The decoders (DecodeJSONEvent, DecodeTaobaoCSV) turn outside input into
// events; they never panic and name the offending field in their errors.
package updater
