package featurestore

import (
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"
)

// A Learner is what the store calls of the incremental models (package
// featurestore/models implements it; the store never imports it). The
// models learn inside Apply, event by event, and write their records into
// the apply batch, so they are exactly once with the features and the
// offset. They keep their records under key prefixes of their own (see
// DESIGN.md's key layout), read through ReadKey and ScanPrefix.
type Learner interface {
	// Merge returns the merger of a merge operand (value) of one of the
	// learner's own keys, and nil for any other key. Pebble calls it, from
	// before Load on.
	Merge(key, value []byte) (pebble.ValueMerger, error)
	// Load reads the learner's committed state from s. Open calls it once,
	// after its own state is loaded.
	Load(s *Store) error
	// Begin starts the learner's part of one apply batch.
	Begin(b *BatchRecords) LearnBatch
	// Abort drops whatever a failed batch changed in memory and reloads
	// the committed state.
	Abort() error
	// ExpireUser and ExpireItem delete, in b, the records of a user or an
	// item that Expire removes.
	ExpireUser(b *pebble.Batch, id string) error
	ExpireItem(b *pebble.Batch, id string) error
	// ExpireCommitted is called once the batch of those calls has
	// committed, while the store publishes its version: what readers
	// share in memory changes here, not in ExpireUser and ExpireItem.
	ExpireCommitted()
	// Close stops the learner's background work (such as building
	// serving indexes) and waits for it. The store's Close calls it, with
	// no Apply running.
	Close() error
}

// A LearnBatch is a learner's part of one apply batch.
type LearnBatch interface {
	// Learn learns from ev given the user's and the item's feature records
	// as they were before ev.
	Learn(ev *Event, user *UserRecord, item *ItemRecord) error
	// Write writes what the batch changed into b, before b commits.
	Write(b *pebble.Batch) error
	// Publish is called once b has committed, while the store publishes
	// its version (version.go): what readers share in memory (caches,
	// tables, published weights) changes here and nowhere else. Readers
	// wait for it, so it should do no more; it must not read through the
	// Store's read methods.
	Publish()
	// Commit is called after the publication: for the learner's own
	// state (its writer caches), which readers never see.
	Commit()
}

// BatchRecords is what a learner sees of the feature records of the apply
// batch in flight.
type BatchRecords struct {
	s        *Store
	items    map[string]*itemState
	newUsers map[string]bool
}

// NewUser reports whether user id had no feature record before the batch
// (so it has no model records either: they are created and expired with
// the feature records).
func (r *BatchRecords) NewUser(id string) bool { return r.newUsers[id] }

// NewItem reports whether item id had no feature record before the batch.
func (r *BatchRecords) NewItem(id string) bool {
	st, ok := r.items[id]
	return ok && !st.existed
}

// Item returns item id's feature record as of the batch (with the batch's
// earlier events applied); one the batch has not loaded is the committed
// one. It leaves the record cache's order as it is: the learner reads
// items it does not change (sampled negatives, mostly cold), which are no
// reason to keep them cached, and a move to the front is most of the cost
// of a hit.
func (r *BatchRecords) Item(id string) (*ItemRecord, error) {
	if st, ok := r.items[id]; ok {
		return st.rec, nil
	}
	if rec, ok := r.s.items.Peek(id); ok {
		return rec, nil
	}
	rec := &ItemRecord{Pop: math.Inf(-1)}
	if _, err := r.s.readItem(id, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// ReadKey returns a copy of the committed value of key. It is for the
// learner's own records; the rest of the key layout is the store's.
func (s *Store) ReadKey(key []byte) ([]byte, bool, error) {
	// The models read their records through here on every cache miss of
	// Apply: the published snapshot under the read lock, without the
	// counters and clock a Version captures.
	if err := s.acquire(); err != nil {
		return nil, false, err
	}
	defer s.release()
	s.pub.RLock()
	defer s.pub.RUnlock()
	return getFrom(s.pub.snap, key)
}

// ScanPrefix calls fn with the rest of the key after prefix and the value
// of every committed key under prefix, in key order. Like ReadKey it is
// for the learner's own records. The value is valid only during the call.
func (s *Store) ScanPrefix(prefix []byte, fn func(id string, v []byte) error) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	for iter.First(); iter.Valid(); iter.Next() {
		v, err := iter.ValueAndErr()
		if err != nil {
			return errors.Join(err, iter.Close())
		}
		if err := fn(string(iter.Key()[len(prefix):]), v); err != nil {
			return errors.Join(err, iter.Close())
		}
	}
	return errors.Join(iter.Error(), iter.Close())
}

// Migrate is for a Learner's Load that converts its own records (an
// encoding or a parameter they depend on changed): it commits what fn
// writes into one batch, publishes the result and flushes it, so that the
// conversion is a checkpoint of its own, never half done and not done
// again after a restart. Nothing else may use the store meanwhile (Open
// calls Load before the store is returned).
func (s *Store) Migrate(fn func(b *pebble.Batch) error) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	b := s.db.NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		return err
	}
	if err := s.plog.Guard(func() error { return b.Commit(pebble.NoSync) }); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	s.publish(s.db.NewSnapshot(), func() {})
	return s.flush()
}
