package datadir

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

// Options configures Open. Zero fields take the documented defaults.
type Options struct {
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // the updater's metrics; nil registers nowhere
	// Store holds the store's definitions, clock and dedup horizon; Open
	// sets its Logger, AllowedLateness, DedupWindow and Learner.
	Store featurestore.Options
	// Models are the incremental models' options (models.Options
	// documents each).
	Models models.Options
	// FeaturesFile, when set, is a feature definitions file that replaces
	// Store.Definitions.
	FeaturesFile string
	// AllowedLateness and MaxFutureSkew are the event-time policy (see
	// updater.Options; defaults 1h and 5m).
	AllowedLateness, MaxFutureSkew time.Duration
	// MinFreeBytes: below it on the data dir's filesystem ingest is
	// refused, and below half of it applying waits. 0: no check.
	MinFreeBytes uint64
	// OutsideSource says the store is fed by an outside source (a Kafka
	// topic), not by the embedded log.
	OutsideSource bool
	// Publisher, when set, makes ingest publish to the outside source
	// instead of appending to the log (updater.Options.Publisher).
	Publisher updater.Publisher
}

// Dir is an open data dir.
type Dir struct {
	Path    string
	Log     *eventlog.Log
	Store   *featurestore.Store
	Models  *models.Models // the store's learner
	Updater *updater.Updater
	lock    *os.File
}

// Open opens (or creates) the data dir at path. See the package comment.
func Open(path string, o Options) (*Dir, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.AllowedLateness <= 0 {
		o.AllowedLateness = time.Hour
	}
	so := o.Store
	if o.FeaturesFile != "" {
		defs, err := featurestore.LoadDefinitions(o.FeaturesFile)
		if err != nil {
			return nil, err
		}
		so.Definitions = defs
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	mods, err := models.New(o.Models)
	if err != nil {
		return nil, err
	}
	so.Learner = mods
	lock, err := lockDir(path)
	if err != nil {
		return nil, err
	}
	lg, err := eventlog.Open(filepath.Join(path, "log"), eventlog.Options{Logger: o.Logger})
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	so.Logger, so.AllowedLateness = o.Logger, o.AllowedLateness
	if !o.OutsideSource {
		// The log holds only events within the lateness of every event
		// before them (ingest checks in log order), so a resend of a
		// derived id older than that never reaches the store. Kafka's
		// watermarks are per partition, and a partition can lag the others
		// by any time, so there derived ids keep the horizon (the default).
		so.DedupWindow = o.AllowedLateness + time.Hour
	}
	st, err := featurestore.Open(filepath.Join(path, "state"), so)
	if err != nil {
		_ = errors.Join(lg.Close(), lock.Close())
		return nil, err
	}
	if st.AppliedOffset() > lg.End() {
		_ = errors.Join(st.Close(), lg.Close(), lock.Close())
		return nil, fmt.Errorf("data dir %s: store applied offset %d is past the log end %d (log and state from different runs?)", path, st.AppliedOffset(), lg.End())
	}
	uo := updater.Options{Logger: o.Logger, AllowedLateness: o.AllowedLateness, MaxFutureSkew: o.MaxFutureSkew, Registerer: o.Registerer,
		MinFreeBytes: o.MinFreeBytes, DiskFree: func() (uint64, error) { return DiskFree(path) }, Publisher: o.Publisher}
	return &Dir{Path: path, Log: lg, Store: st, Models: mods, Updater: updater.New(lg, st, uo), lock: lock}, nil
}

// Close closes the log and the store and releases the lock.
func (d *Dir) Close() error {
	return errors.Join(d.Log.Close(), d.Store.Close(), d.lock.Close())
}

// lockDir takes the data dir for this process: an exclusive lock on
// <dir>/recsys.lock, which holds the pid of its owner so that a second
// process can say who has it. The lock goes with the process, so a crash
// leaves nothing to clean up.
func lockDir(dir string) (*os.File, error) {
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

// DiskFree returns the bytes available to this process on dir's
// filesystem.
func DiskFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
