package models

import (
	"errors"
	"fmt"
)

// ScanItemNeighbors calls fn for every item with neighbours, in item id
// order, with its best neighbours (at most Options.Neighbors) as of
// the store's read clock.
func (m *Models) ScanItemNeighbors(fn func(item string, ns []Neighbor) error) error {
	now := m.st.Now()
	k := m.opts.Neighbors
	var r neighborRecord
	return m.st.ScanPrefix(prefixNeighbors, func(id string, v []byte) error {
		if err := r.decode(v); err != nil {
			return fmt.Errorf("neighbours of %q: %w", id, err)
		}
		if len(r.List) == 0 {
			return nil
		}
		return fn(id, m.rankNeighbors(&r, now, k))
	})
}

// ScanUserFactors calls fn for every user with MF factors, in id order.
func (m *Models) ScanUserFactors(fn func(user string, factors []float32, events int64) error) error {
	var u User
	return m.st.ScanPrefix(prefixUserModel, func(id string, v []byte) error {
		if err := u.decode(v); err != nil {
			return fmt.Errorf("user model %q: %w", id, err)
		}
		if u.Vec == nil {
			return nil
		}
		return fn(id, u.Vec, u.Events)
	})
}

// ScanItemFactors calls fn for every item with MF factors, in id order.
func (m *Models) ScanItemFactors(fn func(item string, factors []float32) error) error {
	var it Item
	return m.st.ScanPrefix(prefixItemModel, func(id string, v []byte) error {
		if err := it.decode(v); err != nil {
			return fmt.Errorf("item model %q: %w", id, err)
		}
		if it.Vec == nil {
			return nil
		}
		return fn(id, it.Vec)
	})
}

// FactorDim is the number of MF factors.
func (m *Models) FactorDim() int { return m.opts.Dim }

// ItemCount is the number of items in the factor table.
func (m *Models) ItemCount() int64 {
	m.table.RLock()
	defer m.table.RUnlock()
	return int64(len(m.table.idx))
}

// ItemNeighborRows estimates the rows of the item_neighbors table: the
// items with factors times the mean exposed list length of up to the first
// 1,000 neighbour records.
func (m *Models) ItemNeighborRows() (int64, error) {
	var n, sum int64
	var r neighborRecord
	errEnough := errors.New("enough")
	err := m.st.ScanPrefix(prefixNeighbors, func(id string, v []byte) error {
		if err := r.decode(v); err != nil {
			return fmt.Errorf("neighbours of %q: %w", id, err)
		}
		n++
		sum += int64(min(len(r.List), m.opts.Neighbors))
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
	return m.ItemCount() * sum / n, nil
}
