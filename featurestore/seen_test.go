package featurestore

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func openSeenStore(t testing.TB, fs vfs.FS, dir string, limit int) *Store {
	t.Helper()
	s, err := Open(dir, Options{FS: fs, Logger: quietLogger(), CacheBytes: 8 << 20, Clock: "event", SeenLimit: limit})
	if err != nil {
		t.Fatalf("Open(%q): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// applyAll applies evs as one batch after the store's applied offset.
func applyAll(t testing.TB, s *Store, evs ...Event) {
	t.Helper()
	first := s.AppliedOffset()
	mustApply(t, s, first+uint64(len(evs)), entries(first, evs...))
}

func mustSeen(t testing.TB, s *Store, user string) []string {
	t.Helper()
	seen, err := s.SeenItems(user, s.Now())
	if err != nil {
		t.Fatalf("SeenItems(%q): %v", user, err)
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// bruteSeen is the seen set computed from the events: user's newest limit
// distinct items touched after now − ttl, by newest touch, then id.
func bruteSeen(evs []Event, user string, now, ttl int64, limit int) []string {
	newest := map[string]int64{}
	for _, e := range evs {
		if e.UserID == user {
			newest[e.ItemID] = max(newest[e.ItemID], e.TS)
		}
	}
	type it struct {
		id string
		ts int64
	}
	var list []it
	for id, ts := range newest {
		if ts > now-ttl {
			list = append(list, it{id, ts})
		}
	}
	slices.SortFunc(list, func(a, b it) int {
		if a.ts != b.ts {
			return cmp.Compare(b.ts, a.ts)
		}
		return strings.Compare(a.id, b.id)
	})
	out := []string{}
	for i := 0; i < len(list) && i < limit; i++ {
		out = append(out, list[i].id)
	}
	slices.Sort(out)
	return out
}

// Items touched before now − SeenTTL leave the seen set (and may be
// recommended again: featurestore/recommend tests that).
func TestSeenTTL(t *testing.T) {
	s := openSeenStore(t, vfs.NewMem(), "db", 0)
	if ttl := s.SeenTTL(); ttl != 7*dayMS {
		t.Fatalf("SeenTTL = %d, want the user view's 7 days", ttl)
	}
	applyAll(t, s, ev("a", "u", "old", "c", BehaviorCart, t0), ev("b", "v", "old", "c", BehaviorView, t0+1))
	applyAll(t, s, ev("c", "u", "new", "c", BehaviorView, t0+7*dayMS-1))
	if got := mustSeen(t, s, "u"); !slices.Equal(got, []string{"new", "old"}) {
		t.Errorf("seen 7 days minus 1 ms later = %v, want [new old]", got)
	}
	applyAll(t, s, ev("d", "v", "other", "c", BehaviorView, t0+7*dayMS))
	if got := mustSeen(t, s, "u"); !slices.Equal(got, []string{"new"}) {
		t.Errorf("seen 7 days later = %v, want [new] (the window is (now − TTL, now])", got)
	}
}

// A stream of several users over twelve days, out of order within a day,
// split into random batches, flushed and compacted at random (so that
// merges are grouped in many ways), with a small limit: the seen set is
// always the newest limit items within the TTL, as computed by brute force,
// also after a reopen.
func TestSeenProperty(t *testing.T) {
	const limit = 7
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			fs := vfs.NewMem()
			s := openSeenStore(t, fs, "db", limit)
			rng := rand.New(rand.NewPCG(seed, 7))
			users := []string{"a", "b", "c"}
			var evs []Event
			clock := t0
			for i := range 1500 {
				clock += rng.Int64N(20 * minute)
				ts := max(t0, clock-rng.Int64N(6*hour)) // out of order
				if rng.IntN(10) == 0 {
					ts = clock // ties and exact repeats
				}
				evs = append(evs, ev(fmt.Sprint("e", i), users[rng.IntN(len(users))], fmt.Sprint("i", rng.IntN(40)), "c", BehaviorView, ts))
			}
			check := func(s *Store, upto int) {
				t.Helper()
				for _, u := range users {
					got, want := mustSeen(t, s, u), bruteSeen(evs[:upto], u, s.Now(), s.SeenTTL(), limit)
					if !slices.Equal(got, want) {
						t.Fatalf("after %d events, seen set of %s = %v, want %v", upto, u, got, want)
					}
				}
			}
			for i := 0; i < len(evs); {
				n := 1 + rng.IntN(60)
				n = min(n, len(evs)-i)
				applyAll(t, s, evs[i:i+n]...)
				i += n
				switch rng.IntN(8) {
				case 0:
					if err := s.Flush(); err != nil {
						t.Fatal(err)
					}
				case 1:
					if err := s.db.Compact(t.Context(), []byte{prefixSeen}, []byte{prefixSeen + 1}, false); err != nil {
						t.Fatal(err)
					}
				}
				if rng.IntN(5) == 0 {
					check(s, i)
				}
			}
			check(s, len(evs))
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			check(openSeenStore(t, fs, "db", limit), len(evs))
		})
	}
}

// Merging seen records is associative: any grouping of the operands gives
// the union with the newest time of each item, cut to the limit.
func TestSeenMergeAssociative(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	key := seenKey(100, "u")
	for range 200 {
		limit := 1 + rng.IntN(6)
		m := newMerger(limit, nil)
		var ops [][]byte
		for range 2 + rng.IntN(6) {
			var list []seenEntry
			for range rng.IntN(8) {
				list = append(list, seenEntry{fmt.Sprint("i", rng.IntN(10)), uint32(rng.IntN(5))})
			}
			// Operands as Apply writes them: one entry per item, sorted, cut.
			byItem := map[string]uint32{}
			for _, e := range list {
				byItem[e.item] = max(byItem[e.item], e.off)
			}
			list = list[:0]
			for id, off := range byItem {
				list = append(list, seenEntry{id, off})
			}
			ops = append(ops, appendSeen(nil, sortSeen(list, limit)))
		}
		merge := func(vals [][]byte) []byte {
			vm, err := m.Merge(key, vals[0])
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range vals[1:] {
				if err := vm.MergeOlder(v); err != nil {
					t.Fatal(err)
				}
			}
			out, _, err := vm.Finish(true)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		all := merge(ops)
		cut := 1 + rng.IntN(len(ops)-1)
		grouped := merge([][]byte{merge(ops[:cut]), merge(ops[cut:])})
		if string(all) != string(grouped) {
			t.Fatalf("merge of %d operands split at %d differs: %q vs %q", len(ops), cut, all, grouped)
		}
	}
}

func TestSeenCorruptAndLimits(t *testing.T) {
	s := openSeenStore(t, vfs.NewMem(), "db", 0)
	applyAll(t, s, ev("a", "u", "i", "c", BehaviorView, t0))
	setRaw(t, s, seenKey(dayOf(t0), "u"), []byte{0x05, 0x09, 'x'})
	if _, err := s.SeenItems("u", s.Now()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("SeenItems over a truncated seen record = %v, want ErrCorrupt", err)
	}
	if _, err := Open("x", Options{FS: vfs.NewMem(), Logger: quietLogger(), SeenLimit: maxSeenLimit + 1}); err == nil {
		t.Error("Open with a seen limit over the maximum succeeded")
	}
}
