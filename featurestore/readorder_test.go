package featurestore

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

// TestReadOrder checks that readOrder returns every row once, by id and
// by time within an id, for spines in order, in reverse, shuffled, of one
// id and of distinct ids.
func TestReadOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	spine := func(n, ids int, ts func(r int) int64) ([]string, []int64) {
		id, at := make([]string, n), make([]int64, n)
		for r := range n {
			id[r], at[r] = "u"+strconv.Itoa(rng.IntN(ids)), ts(r)
		}
		return id, at
	}
	type tc struct {
		name string
		ids  []string
		ts   []int64
	}
	var cases []tc
	for _, n := range []int{0, 1, 2, 7, 1000} {
		for _, ids := range []int{1, 3, n + 1} {
			id, at := spine(n, ids, func(int) int64 { return rng.Int64N(20) - 10 })
			cases = append(cases, tc{"random n=" + strconv.Itoa(n) + " ids=" + strconv.Itoa(ids), id, at})
		}
	}
	// Ids alike in their first 8 bytes (compared as a number first), and
	// ids shorter than 8 bytes, some only a zero byte apart.
	alike := []string{"", "\x00", "ab", "ab\x00", "ab\x00\x00", "abc", "user-000", "user-0001", "user-000\x00", "user-0000-long", "user-0000", "\xff\xff"}
	var lid []string
	var lat []int64
	for range 300 {
		lid, lat = append(lid, alike[rng.IntN(len(alike))]), append(lat, rng.Int64N(5))
	}
	cases = append(cases, tc{"alike prefixes", lid, lat})
	id, at := spine(500, 40, func(int) int64 { return rng.Int64N(1000) })
	sorted := readOrderReference(id, at)
	sid, sat := make([]string, len(id)), make([]int64, len(id))
	for i, r := range sorted {
		sid[i], sat[i] = id[r], at[r]
	}
	cases = append(cases, tc{"sorted", sid, sat})
	rid, rat := slices.Clone(sid), slices.Clone(sat)
	slices.Reverse(rid)
	slices.Reverse(rat)
	cases = append(cases, tc{"reversed", rid, rat})
	// Sorted by id but not by time within one id.
	tid, tat := slices.Clone(sid), slices.Clone(sat)
	tat[len(tat)-1], tat[len(tat)-2] = tat[len(tat)-2]-1, tat[len(tat)-1]
	if tid[len(tid)-1] == tid[len(tid)-2] {
		cases = append(cases, tc{"one pair of times swapped", tid, tat})
	}
	for _, c := range cases {
		got := readOrder(c.ids, c.ts)
		if len(got) != len(c.ids) {
			t.Fatalf("%s: %d rows ordered, want %d", c.name, len(got), len(c.ids))
		}
		seen := make([]bool, len(c.ids))
		for i, r := range got {
			if r < 0 || r >= len(c.ids) || seen[r] {
				t.Fatalf("%s: row %d is ordered twice or out of range", c.name, r)
			}
			seen[r] = true
			if i > 0 {
				p := got[i-1]
				if c.ids[p] > c.ids[r] || c.ids[p] == c.ids[r] && c.ts[p] > c.ts[r] {
					t.Fatalf("%s: rows %d (%s, %d) and %d (%s, %d) are out of order", c.name, p, c.ids[p], c.ts[p], r, c.ids[r], c.ts[r])
				}
			}
		}
	}
}

// readOrderReference is the order readOrder must give, by a plain sort.
func readOrderReference(ids []string, ts []int64) []int {
	order := make([]int, len(ids))
	for r := range order {
		order[r] = r
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(ids[a], ids[b]), cmp.Compare(ts[a], ts[b]))
	})
	return order
}
