package featurestore

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// An outside source (a Kafka topic) feeds the store instead of the
// embedded log. It keeps its own positions (say, one offset per partition)
// as meta keys under "m/", and its rejected records as dead letters, and
// writes both in the same atomic batch as the state changes of the records
// it read: after a crash the state and the positions agree, so the source
// resumes exactly where the state stops. The store knows nothing of the
// source beyond these opaque keys.

// Extra is what ApplyWith writes beside the state changes, in the same
// batch.
type Extra struct {
	// Meta values are stored under "m/" + Key (Key must not be empty and
	// must not be "applied" or "stats").
	Meta []KV
	// DeadLetters are stored like AddDeadLetters' records, each under its
	// own (Received, Seq): a source that derives them from the record's
	// position writes the same key when it re-reads a record.
	DeadLetters []DeadLetter
	// embedded marks the extra of the embedded log's own dead letters
	// (ApplyLog): the entries keep the log's offsets.
	embedded bool
}

// KV is one meta key and its value.
type KV struct {
	Key   string
	Value []byte
}

// DeadLetter is one opaque dead-letter record and its key parts.
type DeadLetter struct {
	Received int64 // Unix ms
	Seq      uint64
	Record   []byte
}

const metaPrefix = "m/"

func (x *Extra) write(b *pebble.Batch) error {
	for _, kv := range x.Meta {
		if kv.Key == "" || metaPrefix+kv.Key == keyApplied || metaPrefix+kv.Key == keyStats {
			return fmt.Errorf("apply: meta key %q is reserved", kv.Key)
		}
		if err := b.Set([]byte(metaPrefix+kv.Key), kv.Value, nil); err != nil {
			return err
		}
	}
	for _, d := range x.DeadLetters {
		if err := b.Set(deadKey(d.Received, d.Seq), d.Record, nil); err != nil {
			return err
		}
	}
	return nil
}

// ApplyWith applies entries from an outside source and writes extra, all
// in one atomic batch. The embedded log's applied offset is left as it is;
// the entries' offsets are only recorded with their dedup markers.
func (s *Store) ApplyWith(entries []Entry, extra Extra) (ApplyResult, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if err := s.acquire(); err != nil {
		return ApplyResult{}, err
	}
	defer s.release()
	return s.applyBatch(s.Stats().AppliedOffset, entries, &extra)
}

// Meta returns the meta values whose keys (without "m/") start with
// prefix.
func (s *Store) Meta(prefix string) (map[string][]byte, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	lo := []byte(metaPrefix + prefix)
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for iter.First(); iter.Valid(); iter.Next() {
		out[string(iter.Key()[len(metaPrefix):])] = append([]byte(nil), iter.Value()...)
	}
	if err := errors.Join(iter.Error(), iter.Close()); err != nil {
		return nil, fmt.Errorf("read meta %q: %w", prefix, err)
	}
	return out, nil
}
