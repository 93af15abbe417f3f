package featurestore

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// scanPrefix calls fn with the id (the key after prefix) and value of
// every key under prefix, in key order.
func (s *Store) scanPrefix(prefix []byte, fn func(id string, v []byte) error) error {
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

// ScanItemNeighbors calls fn for every item with neighbours, in item id
// order, with its best neighbours (at most ModelOptions.Neighbors) as of
// the read clock.
func (s *Store) ScanItemNeighbors(fn func(item string, ns []Neighbor) error) error {
	now := s.Now()
	k := s.models.opts.Neighbors
	var r neighborRecord
	return s.scanPrefix(prefixNeighbors, func(id string, v []byte) error {
		if err := r.decode(v); err != nil {
			return fmt.Errorf("neighbours of %q: %w", id, err)
		}
		if len(r.List) == 0 {
			return nil
		}
		return fn(id, s.rankNeighbors(&r, now, k))
	})
}

// ScanUserFactors calls fn for every user with MF factors, in id order.
func (s *Store) ScanUserFactors(fn func(user string, factors []float32, events int64) error) error {
	var m userModel
	return s.scanPrefix(prefixUserModel, func(id string, v []byte) error {
		if err := m.decode(v); err != nil {
			return fmt.Errorf("user model %q: %w", id, err)
		}
		if m.Vec == nil {
			return nil
		}
		return fn(id, m.Vec, m.Events)
	})
}

// ScanItemFactors calls fn for every item with MF factors, in id order.
func (s *Store) ScanItemFactors(fn func(item string, factors []float32) error) error {
	var m itemModel
	return s.scanPrefix(prefixItemModel, func(id string, v []byte) error {
		if err := m.decode(v); err != nil {
			return fmt.Errorf("item model %q: %w", id, err)
		}
		if m.Vec == nil {
			return nil
		}
		return fn(id, m.Vec)
	})
}

// FactorDim is the number of MF factors.
func (s *Store) FactorDim() int { return s.models.opts.Dim }

// ModelItems is the number of items in the factor table.
func (s *Store) ModelItems() int64 {
	s.models.table.RLock()
	defer s.models.table.RUnlock()
	return int64(len(s.models.table.idx))
}

// ItemNeighborRows estimates the rows of the item_neighbors table: the
// items with factors times the mean exposed list length of up to the first
// 1,000 neighbour records.
func (s *Store) ItemNeighborRows() (int64, error) {
	var n, sum int64
	var r neighborRecord
	errEnough := errors.New("enough")
	err := s.scanPrefix(prefixNeighbors, func(id string, v []byte) error {
		if err := r.decode(v); err != nil {
			return fmt.Errorf("neighbours of %q: %w", id, err)
		}
		n++
		sum += int64(min(len(r.List), s.models.opts.Neighbors))
		if n == 1000 {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	return s.ModelItems() * sum / n, nil
}
