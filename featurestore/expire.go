package featurestore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/streamrec/recsys/featurestore/internal/codec"
)

// Expiry keeps disk bounded under an endless stream. Everything keyed by
// time is removed with range deletes a whole bucket at a time once it is
// more than the longest TTL plus a day old (reads treat data that old as
// expired already); records of entities without events for that long are
// deleted one by one with their index entries. Expire runs from Apply when
// the clock has moved to a new day.

// Retention is the age (ms) past which data may be removed: the longest
// view TTL (7 days when no view has one) plus a day.
func (s *Store) Retention() int64 {
	var ttl int64
	for _, v := range s.defs.Views {
		ttl = max(ttl, v.TTL.Milliseconds())
	}
	if ttl == 0 {
		ttl = 7 * dayMS
	}
	return ttl + dayMS
}

// ExpireStats says what one Expire removed.
type ExpireStats struct {
	CutoffDay uint32 // time-keyed data of days before this one was removed
	Users     int
	Items     int
}

// Expire removes data older than the retention as of now (Unix ms): tiles,
// hourly item counts, seen records and dead letters of old days, dedup
// entries of days before the dedup horizon, and the records, purchase
// markers and popularity entries of entities whose newest event is older
// than that.
func (s *Store) Expire(now int64) (ExpireStats, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if err := s.acquire(); err != nil {
		return ExpireStats{}, err
	}
	defer s.release()
	es, err := s.expire(now)
	if err != nil && s.learner != nil {
		// The learner noted what the failed batch would have deleted (and
		// dropped it from its caches): it must not act on it later.
		if aerr := s.learner.Abort(); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	return es, err
}

func (s *Store) expire(now int64) (ExpireStats, error) {
	cutoff := now - s.Retention()
	if cutoff <= 0 {
		return ExpireStats{}, nil
	}
	// Align to the coarsest bucket so no bucket is cut in half.
	day := dayOf(cutoff)
	day -= day % bucketDays(resCoarse)
	es := ExpireStats{CutoffDay: day}
	b := s.db.NewBatch()
	defer b.Close()
	for _, p := range []byte{'t', 'h', 'd', prefixSeen} {
		end := binary.BigEndian.AppendUint32([]byte{p}, day)
		if err := b.DeleteRange([]byte{p}, end, nil); err != nil {
			return es, err
		}
	}
	// Dedup entries live for the dedup horizon, by the day of the event time.
	if dedupCut := now - s.opts.DedupHorizon.Milliseconds(); dedupCut > 0 {
		end := binary.BigEndian.AppendUint32(append([]byte(nil), prefixDedup...), dayOf(dedupCut))
		if err := b.DeleteRange(prefixDedup, end, nil); err != nil {
			return es, err
		}
	}
	st := s.Stats()
	var err error
	if es.Users, err = s.expireEntities(b, prefixUser, cutoff, func(id string, rec []byte) error {
		s.users.Remove(id)
		if s.learner != nil {
			if err := s.learner.ExpireUser(b, id); err != nil {
				return err
			}
		}
		p := makeKey(prefixBought, id, "")
		return b.DeleteRange(p, prefixEnd(p), nil) // p ends in the separator: not u10 with u1
	}); err != nil {
		return es, err
	}
	var expiredItems []string
	var popChs []popChange
	if es.Items, err = s.expireEntities(b, prefixItem, cutoff, func(id string, rec []byte) error {
		s.items.Remove(id)
		expiredItems = append(expiredItems, id)
		if s.learner != nil {
			if err := s.learner.ExpireItem(b, id); err != nil {
				return err
			}
		}
		var it ItemRecord
		if err := it.decode(rec); err != nil {
			return err
		}
		popChs = append(popChs, popRemoval(id, &it))
		return nil
	}); err != nil {
		return es, err
	}
	st.Users -= int64(es.Users)
	st.Items -= int64(es.Items)
	if err := b.Set([]byte(keyStats), encodeStats(&st), nil); err != nil {
		return es, err
	}
	if err := s.plog.Guard(func() error { return b.Commit(pebble.NoSync) }); err != nil {
		return es, fmt.Errorf("expire: %w", err)
	}
	popTouched := s.pop.apply(popChs)
	s.trend.dropBefore(int64(day) * dayMS)
	s.publish(s.db.NewSnapshot(), func() {
		s.pub.pop = s.pop.published(s.pub.pop, popTouched)
		s.pub.trend = s.trend.published(s.pub.trend)
		if len(expiredItems) > 0 {
			s.itemReads.Invalidate(expiredItems...)
		}
		if s.wins != nil {
			s.wins.clear() // expired entities and tiles
		}
		if s.learner != nil {
			s.learner.ExpireCommitted()
		}
		s.mu.Lock()
		s.mu.stats.Users, s.mu.stats.Items = st.Users, st.Items
		s.mu.Unlock()
	})
	s.logger.Debug("expired old data", "cutoff_day", day, "users", es.Users, "items", es.Items)
	return es, nil
}

// expireEntities deletes the records under prefix whose newest event is
// before cutoff, calling drop for each first.
func (s *Store) expireEntities(b *pebble.Batch, prefix []byte, cutoff int64, drop func(id string, rec []byte) error) (int, error) {
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, err
	}
	n := 0
	for iter.First(); iter.Valid(); iter.Next() {
		v, err := iter.ValueAndErr()
		if err != nil {
			return n, errors.Join(err, iter.Close())
		}
		var c Counters
		d := codec.Decoder{B: v}
		d.Version(recordVersion)
		getCounters(&d, &c)
		if d.Err {
			return n, errors.Join(fmt.Errorf("expire %q: %w", iter.Key(), ErrCorrupt), iter.Close())
		}
		if c.LastTSAny >= cutoff {
			continue
		}
		id := string(iter.Key()[len(prefix):])
		if err := drop(id, v); err != nil {
			return n, errors.Join(err, iter.Close())
		}
		if err := b.Delete(iter.Key(), nil); err != nil {
			return n, errors.Join(err, iter.Close())
		}
		n++
	}
	return n, errors.Join(iter.Error(), iter.Close())
}
