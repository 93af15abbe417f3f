package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/streamrec/recsys/featurestore"
	"github.com/streamrec/recsys/featurestore/models"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/eventlog"
)

// ingestConfig is the event-time and disk policy of the updater.
type ingestConfig struct {
	lateness, futureSkew time.Duration
	minFree              uint64 // bytes; 0: no free-space check
	// kafka: the topic is the source (its watermarks are per partition),
	// not the embedded log.
	kafka bool
}

// engine is the stateful core of a data dir: the event log, the store
// with its models, and the updater between them.
type engine struct {
	log    *eventlog.Log
	store  *featurestore.Store
	models *models.Models
	upd    *updater.Updater
	lock   *os.File
}

// openEngine opens (or creates) the data dir: <dir>/log holds the durable
// event log, <dir>/state the feature store.
// tune, if given, adjusts the updater's options (Kafka mode sets Publish).
func openEngine(dir string, sc storeConfig, ing ingestConfig, logger *slog.Logger, reg prometheus.Registerer, tune ...func(*updater.Options)) (*engine, error) {
	defs := featurestore.DefaultDefinitions()
	if sc.Features != "" {
		var err error
		if defs, err = featurestore.LoadDefinitions(sc.Features); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	lock, err := lockDataDir(dir)
	if err != nil {
		return nil, err
	}
	mods, err := models.New(sc.Models.options())
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	lg, err := eventlog.Open(filepath.Join(dir, "log"), eventlog.Options{Logger: logger})
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	so := featurestore.Options{Logger: logger, Definitions: defs, Clock: sc.Clock, DedupHorizon: sc.DedupHorizon, AllowedLateness: ing.lateness, Learner: mods}
	if !ing.kafka {
		// The log holds only events within the lateness of every event
		// before them (ingest checks in log order), so a resend of a
		// derived id older than that never reaches the store. Kafka's
		// watermarks are per partition, and a partition can lag the others
		// by any time, so there derived ids keep the horizon (the default).
		so.DedupWindow = ing.lateness + time.Hour
	}
	st, err := featurestore.Open(filepath.Join(dir, "state"), so)
	if err != nil {
		_ = errors.Join(lg.Close(), lock.Close())
		return nil, err
	}
	if st.AppliedOffset() > lg.End() {
		_ = errors.Join(st.Close(), lg.Close(), lock.Close())
		return nil, fmt.Errorf("data dir %s: store applied offset %d is past the log end %d (log and state from different runs?)", dir, st.AppliedOffset(), lg.End())
	}
	uo := updater.Options{Logger: logger, AllowedLateness: ing.lateness, MaxFutureSkew: ing.futureSkew, Registerer: reg,
		MinFreeBytes: ing.minFree, DiskFree: func() (uint64, error) { return diskFree(dir) }}
	for _, f := range tune {
		f(&uo)
	}
	return &engine{log: lg, store: st, models: mods, upd: updater.New(lg, st, uo), lock: lock}, nil
}

func (e *engine) Close() error {
	return errors.Join(e.log.Close(), e.store.Close(), e.lock.Close())
}

// lockDataDir takes the data dir for this process: an exclusive lock on
// <dir>/recsys.lock, which holds the pid of its owner so that a second
// process can say who has it. The lock goes with the process, so a crash
// leaves nothing to clean up.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "recsys.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			owner := "another process"
			if pid := strings.TrimSpace(string(b)); pid != "" {
				owner = "pid " + pid
			}
			return nil, fmt.Errorf("data dir %s is in use: another recsys is serving it (%s); stop it or give another --data.dir", dir, owner)
		}
		return nil, fmt.Errorf("data dir %s: lock: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// diskFree returns the bytes available to this process on dir's
// filesystem.
func diskFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
