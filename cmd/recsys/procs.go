package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/spf13/pflag"
)

// Serving beside the apply loop on few cores: the apply batch, its tile
// worker, Pebble's flushes and compactions and the GC are CPU-bound
// goroutines that run for the Go scheduler's whole 10 ms time slice. With
// one P per core a request woken from a lock or a read waits behind them
// for a P, and a goroutine holding the publication lock can be parked in
// mid-publication with every reader queued behind it. With more Ps than
// cores, the kernel time-slices the threads instead, at a finer grain and
// in favour of the threads that slept (the readers). On this 2-core
// machine, 2 Ps per core halved the recommendation p99s and doubled their
// throughput at 4 clients while ingest ran at 10 k events/s, with the
// apply rate unchanged (DESIGN.md, "Concurrency and lock order").

// maxProcsPerCore bounds --runtime.procs-per-core.
const maxProcsPerCore = 8

// checkProcsPerCore validates --runtime.procs-per-core.
func checkProcsPerCore(n int) error {
	if n < 1 || n > maxProcsPerCore {
		return fmt.Errorf("runtime.procs-per-core: %d is not between 1 and %d", n, maxProcsPerCore)
	}
	return nil
}

// procsFor returns the GOMAXPROCS to set for perCore Ps per core (0: keep
// the current one): the runtime's own choice is kept when GOMAXPROCS is
// in the environment or when it is below the machine's cores (a CPU quota
// set it: oversubscribing a quota gets the process throttled, a far worse
// stall than the one this avoids).
func procsFor(perCore int, envSet bool, current, cores int) int {
	if perCore <= 1 || envSet || current < cores {
		return 0
	}
	return perCore * current
}

// applyProcs sets GOMAXPROCS to perCore Ps per core (see procsFor) and
// logs what it chose.
func applyProcs(perCore int, logger *slog.Logger) {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	cur, cores := runtime.GOMAXPROCS(0), runtime.NumCPU()
	n := procsFor(perCore, envSet, cur, cores)
	if n == 0 {
		why := "procs-per-core 1"
		switch {
		case envSet:
			why = "GOMAXPROCS is in the environment"
		case cur < cores:
			why = "a CPU quota below the cores"
		}
		logger.Info("runtime", "gomaxprocs", cur, "cores", cores, "kept_because", why)
		return
	}
	runtime.GOMAXPROCS(n)
	logger.Info("runtime", "gomaxprocs", n, "cores", cores, "procs_per_core", perCore)
}

// bindBenchProcs binds a bench's --runtime.procs-per-core, which defaults
// to serve's so that the bench measures what serve runs.
func bindBenchProcs(fs *pflag.FlagSet, perCore *int) {
	fs.IntVar(perCore, "runtime.procs-per-core", 2, "Go scheduler threads per core, as serve sets them (serve's flag)")
}

// setBenchProcs checks a bench's --runtime.procs-per-core (a usage error)
// and applies it.
func setBenchProcs(perCore int) error {
	if err := checkProcsPerCore(perCore); err != nil {
		return usageError{err}
	}
	applyProcs(perCore, benchLogger())
	return nil
}
