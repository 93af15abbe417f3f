package featurestore

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// DiskUsage is the state's bytes on disk by owner (Pebble's estimates of
// the key ranges' files, after a flush): what users and items cost each.
type DiskUsage struct {
	Users  uint64 // user records, seen records, purchase markers, user tiles, the learner's user prefixes
	Items  uint64 // item records, hourly item counts, popularity index, item tiles, the learner's item prefixes
	Shared uint64 // the rest: dedup markers, dead letters, metadata
}

// DiskUsage estimates the state's bytes on disk per owner. The learner's
// key prefixes (which the store does not know) are attributed as given.
func (s *Store) DiskUsage(learnerUsers, learnerItems [][]byte) (DiskUsage, error) {
	if err := s.acquire(); err != nil {
		return DiskUsage{}, err
	}
	defer s.release()
	sum := func(prefixes [][]byte) (uint64, error) {
		var n uint64
		for _, p := range prefixes {
			b, err := s.db.EstimateDiskUsage(p, prefixEnd(p))
			if err != nil {
				return 0, err
			}
			n += b
		}
		return n, nil
	}
	var u DiskUsage
	var err error
	if u.Users, err = sum(append([][]byte{prefixUser, {prefixSeen}, prefixBought}, learnerUsers...)); err != nil {
		return DiskUsage{}, fmt.Errorf("disk usage: %w", err)
	}
	if u.Items, err = sum(append([][]byte{prefixItem, {'h'}, prefixPop}, learnerItems...)); err != nil {
		return DiskUsage{}, fmt.Errorf("disk usage: %w", err)
	}
	// Tiles: t<bucket><res><kind>…, one range per (bucket, res, kind)
	// present, found by seeking past each.
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'t'}, UpperBound: []byte{'t' + 1}})
	if err != nil {
		return DiskUsage{}, fmt.Errorf("disk usage: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; {
		k := it.Key()
		if len(k) < 7 {
			ok = it.Next()
			continue
		}
		group := bytes.Clone(k[:7])
		end := prefixEnd(group)
		b, err := s.db.EstimateDiskUsage(group, end)
		if err != nil {
			return DiskUsage{}, fmt.Errorf("disk usage: %w", err)
		}
		if group[6] == kindUser {
			u.Users += b
		} else {
			u.Items += b
		}
		ok = it.SeekGE(end)
	}
	if err := it.Error(); err != nil {
		return DiskUsage{}, fmt.Errorf("disk usage: %w", err)
	}
	total, err := s.db.EstimateDiskUsage([]byte{0}, []byte{0xff})
	if err != nil {
		return DiskUsage{}, fmt.Errorf("disk usage: %w", err)
	}
	u.Shared = total - min(total, u.Users+u.Items)
	return u, nil
}
