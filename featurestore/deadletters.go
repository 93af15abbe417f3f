package featurestore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Dead letters are events rejected for their event time, kept with the
// reason for inspection. The store keeps them as opaque records (the
// updater encodes them) under
//
//	d<day><received ms><seq>  (4 + 8 + 8 bytes, big-endian)
//
// so that they list in arrival order and expire a day at a time.

var prefixDead = []byte{'d'}

func deadKey(received int64, seq uint64) []byte {
	k := make([]byte, 0, 21)
	k = append(k, prefixDead...)
	k = binary.BigEndian.AppendUint32(k, dayOf(received))
	k = binary.BigEndian.AppendUint64(k, uint64(received))
	return binary.BigEndian.AppendUint64(k, seq)
}

// logDeadLetterBit marks the sequence numbers of the embedded log's dead
// letters (their log offsets) apart from those of AddDeadLetters (a
// counter) and of Kafka mode (2^63 | partition<<40 | offset).
const logDeadLetterBit = 1 << 62

// LogDeadLetterSeq is the sequence number of the dead letter at log
// offset off (see ApplyLog).
func LogDeadLetterSeq(off uint64) uint64 { return logDeadLetterBit | off }

// AddDeadLetters stores recs, received at the given time (Unix ms). (The
// embedded log's dead letters go through the log and ApplyLog instead.)
func (s *Store) AddDeadLetters(received int64, recs [][]byte) error {
	if len(recs) == 0 {
		return nil
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	b := s.db.NewBatch()
	defer b.Close()
	for _, r := range recs {
		if err := b.Set(deadKey(received, s.deadSeq.Add(1)), r, nil); err != nil {
			return err
		}
	}
	if err := s.plog.Guard(func() error { return b.Commit(pebble.NoSync) }); err != nil {
		return fmt.Errorf("add dead letters: %w", err)
	}
	s.deadCount.Add(int64(len(recs)))
	return nil
}

// DeadLetters returns up to limit dead letters, newest first.
func (s *Store) DeadLetters(limit int) ([][]byte, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixDead, UpperBound: prefixEnd(prefixDead)})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for ok := iter.Last(); ok && len(out) < limit; ok = iter.Prev() {
		v, err := iter.ValueAndErr()
		if err != nil {
			return nil, errors.Join(err, iter.Close())
		}
		out = append(out, append([]byte(nil), v...))
	}
	return out, errors.Join(iter.Error(), iter.Close())
}

// DeadLetterCount is the number of dead letters kept.
func (s *Store) DeadLetterCount() int64 { return s.deadCount.Load() }

// countDeadLetters initializes the count and sequence at open.
func (s *Store) countDeadLetters() error {
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixDead, UpperBound: prefixEnd(prefixDead)})
	if err != nil {
		return err
	}
	var n int64
	var seq uint64
	for iter.First(); iter.Valid(); iter.Next() {
		n++
		if k := iter.Key(); len(k) == 21 {
			seq = max(seq, binary.BigEndian.Uint64(k[13:]))
		}
	}
	s.deadCount.Store(n)
	s.deadSeq.Store(seq)
	return errors.Join(iter.Error(), iter.Close())
}
