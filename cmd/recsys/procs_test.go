package main

import "testing"

func TestProcsFor(t *testing.T) {
	for _, c := range []struct {
		perCore        int
		envSet         bool
		current, cores int
		want           int
	}{
		{2, false, 2, 2, 4},
		{3, false, 8, 8, 24},
		{1, false, 2, 2, 0}, // Go's default
		{2, true, 2, 2, 0},  // GOMAXPROCS in the environment
		{2, true, 5, 2, 0},  // even above the cores
		{2, false, 2, 8, 0}, // a CPU quota of 2 on 8 cores
		{2, false, 1, 1, 2}, // one core
	} {
		if got := procsFor(c.perCore, c.envSet, c.current, c.cores); got != c.want {
			t.Errorf("procsFor(%d, %v, %d, %d) = %d, want %d", c.perCore, c.envSet, c.current, c.cores, got, c.want)
		}
	}
	for _, n := range []int{0, -1, maxProcsPerCore + 1} {
		if checkProcsPerCore(n) == nil {
			t.Errorf("checkProcsPerCore(%d) accepted it", n)
		}
	}
	if err := checkProcsPerCore(maxProcsPerCore); err != nil {
		t.Error(err)
	}
}
