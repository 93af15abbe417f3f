package featurestore

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// countKeys counts the keys starting with prefix.
func countKeys(t *testing.T, s *Store, prefix []byte) int {
	t.Helper()
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	defer iter.Close()
	n := 0
	for iter.First(); iter.Valid(); iter.Next() {
		n++
	}
	return n
}

// An endless stream keeps only what the TTL needs: old tiles, hourly
// counts, dedup entries, seen records and inactive entities go; recent data stays and
// reads the same.
func TestExpire(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Day 0-19: user "old" and item "gone" only on day 0; "u" and "i" daily.
	var ents []Entry
	for d := range int64(20) {
		ts := t0 + d*dayMS
		ents = append(ents, Entry{Event: ev(fmt.Sprintf("e%d", d), "u", "i", "c", BehaviorView, ts)})
		if d == 0 {
			ents = append(ents, Entry{Event: ev("old", "old", "gone", "c", BehaviorPurchase, ts)})
		}
	}
	for i := range ents {
		ents[i].Offset = uint64(i)
	}
	mustApply(t, s, uint64(len(ents)), ents)
	before := map[byte]int{}
	for _, p := range []byte{'t', 'h', 'e', prefixSeen} {
		before[p] = countKeys(t, s, []byte{p})
	}
	now := s.Now()
	rt := ReadTime{Now: now, AsOf: now}
	idx, err := ItemView.Resolve([]string{"view_count_7d", "view_count_24h"})
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.Get(ItemView, []string{"i"}, idx, rt)
	if err != nil {
		t.Fatal(err)
	}

	es, err := s.Expire(now)
	if err != nil {
		t.Fatal(err)
	}
	if es.Users != 1 || es.Items != 1 {
		t.Errorf("Expire removed %d users and %d items, want 1 and 1 (old, gone)", es.Users, es.Items)
	}
	if st := s.Stats(); st.Users != 1 || st.Items != 1 {
		t.Errorf("stats after expiry: %d users, %d items, want 1 and 1", st.Users, st.Items)
	}
	for _, p := range []byte{'t', 'h', 'e', prefixSeen} {
		if after := countKeys(t, s, []byte{p}); after >= before[p] || after == 0 {
			t.Errorf("%c keys: %d before, %d after expiry; want fewer but some", p, before[p], after)
		}
	}
	if _, ok, _ := s.User("old"); ok {
		t.Error("user old survived expiry")
	}
	if bought, _ := s.Purchased("old", "gone"); bought {
		t.Error("purchase marker of an expired user survived")
	}
	pop, err := s.Popular("", 10, nil)
	if err != nil || len(pop) != 1 || pop[0].ItemID != "i" {
		t.Errorf("Popular after expiry = %v, %v; want only i", pop, err)
	}
	got, err := s.Get(ItemView, []string{"i"}, idx, rt)
	if err != nil {
		t.Fatal(err)
	}
	for j := range idx {
		if !valueEqual(got[0].Values[j], want[0].Values[j]) {
			t.Errorf("%s after expiry = %+v, before %+v", ItemView.Features[idx[j]].Name, got[0].Values[j], want[0].Values[j])
		}
	}
	// Expiry is idempotent.
	if es, err := s.Expire(now); err != nil || es.Users != 0 || es.Items != 0 {
		t.Errorf("second Expire = %+v, %v", es, err)
	}
}

// Expiring a user removes that user's purchase markers only, not those of
// users whose id starts with it (u1 and u10), and PurchasedItems reads
// exactly a user's own.
func TestExpirePurchasesOfOneUser(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ents := []Entry{
		{Event: ev("a", "u1", "x", "c", BehaviorPurchase, t0)},
		{Event: ev("b", "u10", "y", "c", BehaviorPurchase, t0+1)},
	}
	for d := range int64(20) {
		ents = append(ents, Entry{Event: ev(fmt.Sprintf("e%d", d), "u10", "z", "c", BehaviorView, t0+(d+1)*dayMS)})
	}
	for i := range ents {
		ents[i].Offset = uint64(i)
	}
	mustApply(t, s, uint64(len(ents)), ents)
	if got, complete, err := s.PurchasedItems("u1", 10); err != nil || !complete || len(got) != 1 || !got["x"] {
		t.Fatalf("PurchasedItems(u1) = %v %v %v, want {x}", got, complete, err)
	}
	if _, complete, err := s.PurchasedItems("u10", 0); err != nil || complete {
		t.Fatalf("PurchasedItems(u10, limit 0) complete = %v (%v), want false", complete, err)
	}
	es, err := s.Expire(s.Now())
	if err != nil {
		t.Fatal(err)
	}
	if es.Users != 1 {
		t.Fatalf("expired %d users, want 1 (u1)", es.Users)
	}
	for _, c := range []struct {
		user, item string
		want       bool
	}{{"u1", "x", false}, {"u10", "y", true}} {
		if got, err := s.Purchased(c.user, c.item); err != nil || got != c.want {
			t.Errorf("Purchased(%s, %s) = %v (%v) after expiring u1, want %v", c.user, c.item, got, err, c.want)
		}
	}
	if got, complete, err := s.PurchasedItems("u10", 10); err != nil || !complete || len(got) != 1 || !got["y"] {
		t.Errorf("PurchasedItems(u10) = %v %v %v, want {y}", got, complete, err)
	}
}

// recLearner is a learner that learns nothing and records the expiry
// calls, for the tests of how the store drives a learner.
type recLearner struct {
	expiredItems []string
	committed    [][]string // the items expired as of each ExpireCommitted
	aborts       int
}

type nopBatch struct{}

func (nopBatch) Learn(*Event, *UserRecord, *ItemRecord) error { return nil }
func (nopBatch) Write(*pebble.Batch) error                    { return nil }
func (nopBatch) Publish()                                     {}
func (nopBatch) Commit()                                      {}

func (l *recLearner) Merge(key, value []byte) (pebble.ValueMerger, error) { return nil, nil }
func (l *recLearner) Load(*Store) error                                   { return nil }
func (l *recLearner) Begin(*BatchRecords) LearnBatch                      { return nopBatch{} }
func (l *recLearner) ExpireUser(*pebble.Batch, string) error              { return nil }
func (l *recLearner) ExpireItem(_ *pebble.Batch, id string) error {
	l.expiredItems = append(l.expiredItems, id)
	return nil
}
func (l *recLearner) ExpireCommitted() {
	l.committed = append(l.committed, l.expiredItems)
	l.expiredItems = nil
}
func (l *recLearner) Abort() error { l.aborts++; l.expiredItems = nil; return nil }
func (l *recLearner) Close() error { return nil }

// A failed expiry batch aborts the learner, which has noted items that
// the batch would have deleted: a later expiry commits only its own.
func TestFailedExpiryAbortsTheLearner(t *testing.T) {
	l := &recLearner{}
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quietLogger(), Clock: "event", Learner: l})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustApply(t, s, 2, entries(0,
		ev("e1", "u", "a-old", "c", BehaviorView, t0),
		ev("e2", "u", "z-old", "c", BehaviorView, t0)))
	// z-old's record is corrupt: the expiry fails after a-old's ExpireItem.
	setRaw(t, s, itemKey("z-old"), []byte{0xff, 0xff})
	if _, err := s.Expire(t0 + 30*dayMS); err == nil {
		t.Fatal("Expire over a corrupt record: no error")
	}
	if l.aborts != 1 || len(l.committed) != 0 {
		t.Fatalf("after a failed expiry: %d aborts, %d commits; want 1, 0", l.aborts, len(l.committed))
	}
	// a-old gets an event again: it is live, a later expiry leaves it.
	setRaw(t, s, itemKey("z-old"), nil)
	if err := s.db.Delete(itemKey("z-old"), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, 3, entries(2, ev("e3", "u2", "a-old", "c", BehaviorView, t0+29*dayMS)))
	if _, err := s.Expire(t0 + 30*dayMS); err != nil {
		t.Fatal(err)
	}
	if len(l.committed) != 1 || len(l.committed[0]) != 0 {
		t.Fatalf("the second expiry committed %v, want no item (a-old is live again)", l.committed)
	}
}
