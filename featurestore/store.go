package featurestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/axiomhq/hyperloglog"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore/internal/codec"
	"github.com/streamrec/recsys/featurestore/internal/readcache"
	"github.com/streamrec/recsys/featurestore/internal/sizedlru"
)

// Options configures a Store. The zero value is usable: EnsureDefaults fills
// in the documented defaults.
type Options struct {
	// Logger receives Pebble's messages. Default: slog.Default().
	Logger *slog.Logger
	// PopularityHalfLife is the event-time half-life of the popularity score.
	// Default: 6h.
	PopularityHalfLife time.Duration
	// CacheBytes is the size of Pebble's block cache. Default: 256 MiB.
	// The memtables (memTableSize each, up to memTables of them) come on
	// top of it.
	CacheBytes int64
	// memTableSize overrides memTableSize in tests.
	memTableSize int64
	// trendLimit overrides trendLimit in tests.
	trendLimit int
	// FS is the filesystem; tests use vfs.NewMem(). Default: vfs.Default.
	FS vfs.FS
	// Definitions are the views served; default DefaultDefinitions().
	Definitions *Definitions
	// Clock is what "now" means for reads: "wall" (default) or "event",
	// the newest event time applied, so that replays of historical data
	// read as if live.
	Clock string
	// Now is the wall clock; tests replace it. Default time.Now.
	Now func() time.Time
	// DedupHorizon is how long a client-supplied event id is remembered: a
	// resend within it is applied once. Default 7 days. (A resend older than
	// the allowed lateness is rejected as late before it reaches the store.)
	DedupHorizon time.Duration
	// AllowedLateness is the source's: how far behind the newest event
	// time an event may arrive. The in-memory filters of derived ids
	// cover the hours from the one holding the newest applied event time
	// minus AllowedLateness minus 1h on (see dedup.go). Default 1h.
	AllowedLateness time.Duration
	// DedupWindow is how long behind the newest applied event time the
	// dedup keys of derived ids (Event.Derived) are kept; a derived id
	// older than that is applied as new. Default DedupHorizon, safe with
	// any source (a Kafka partition may lag the others by any time). The
	// embedded log sets AllowedLateness + 1h: its ingest rejects older
	// events in log order. At least AllowedLateness + 1h.
	DedupWindow time.Duration
	// RecordCacheEntries bounds the writer's cache of decoded user and item
	// records (each LRU holds this many) and the readers' cache of item
	// records. Default: 131072.
	RecordCacheEntries int
	// RecordCacheBytes bounds the memory of those caches too (by the
	// records' sizes: three fifths for the writer's users, a fifth each
	// for its items and the readers'); 0: by entries alone.
	RecordCacheBytes int64
	// MemoryLimit, when positive, sets the memory options (CacheBytes,
	// the memtables, WindowCacheBytes, RecordCacheBytes) from
	// SplitMemory(MemoryLimit), which Open checks.
	MemoryLimit int64
	// WindowCacheBytes bounds the materialized window state that online
	// reads of window features use instead of the tiles (winstate.go).
	// Default: 256 MiB; negative: none (every read scans the tiles).
	WindowCacheBytes int64
	// Learner is the incremental models (featurestore/models.New), which
	// learn from every applied event in the apply batch; nil: none. A
	// learner serves one store.
	Learner Learner
	// TestingAfterCommit, when set, runs in Apply between the Pebble
	// commit of a batch and the publication of its version (version.go),
	// in the applying goroutine: tests of readers use it to read while a
	// batch is committed but not published. Nil in production.
	TestingAfterCommit func()
	// SeenLimit is how many distinct items a user's seen set (what
	// exclude_seen drops) keeps: the newest touched within SeenTTL. Up to
	// this many the filter is exact; past it the oldest may come back.
	// Reading it at recommendation time costs at most SeenTTL in days + 2
	// point reads. Default 10000; at most 100000.
	SeenLimit int
	// FlushWait bounds the wait for a flush of the memtables (Flush,
	// Checkpoint, Close): a disk that fails or is full makes Pebble retry
	// the flush in the background, and waiting on stops at this. Default
	// 10s.
	FlushWait time.Duration
	// CheckpointInterval is how often, at most, the applied state is made
	// durable: Apply starts a flush of the memtables once the last one is
	// this old (the state has no write-ahead log, so a flush is its
	// checkpoint, with the offsets it reflects). A crash loses at most
	// this much applied state (plus a memtable in flight), applied again
	// from the log or the topic on the next start: it bounds the restart's
	// replay. Default 5s.
	CheckpointInterval time.Duration
}

// EnsureDefaults fills in zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.PopularityHalfLife <= 0 {
		o.PopularityHalfLife = 6 * time.Hour
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 256 << 20
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Definitions == nil {
		o.Definitions = defaults
	}
	if o.Clock == "" {
		o.Clock = "wall"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DedupHorizon <= 0 {
		o.DedupHorizon = 7 * 24 * time.Hour
	}
	if o.AllowedLateness <= 0 {
		o.AllowedLateness = time.Hour
	}
	if o.DedupWindow <= 0 {
		o.DedupWindow = o.DedupHorizon
	}
	o.DedupWindow = max(o.DedupWindow, o.AllowedLateness+time.Hour)
	if o.RecordCacheEntries <= 0 {
		o.RecordCacheEntries = 128 << 10
	}
	if o.MemoryLimit > 0 {
		if b, err := SplitMemory(o.MemoryLimit); err == nil {
			b.apply(o)
		}
	}
	if o.WindowCacheBytes == 0 {
		o.WindowCacheBytes = 256 << 20
	}
	if o.FlushWait <= 0 {
		o.FlushWait = 10 * time.Second
	}
	if o.SeenLimit <= 0 {
		o.SeenLimit = 10_000
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
}

// DefaultCheckpointInterval is Options.CheckpointInterval's default.
const DefaultCheckpointInterval = 5 * time.Second

// Stats are the store's counters.
type Stats struct {
	AppliedOffset uint64 // one past the last applied log entry
	Events        int64  // events applied
	Duplicates    int64  // events skipped as duplicates
	Users         int64
	Items         int64
	MaxTS         int64 // newest event time applied, Unix ms
}

// Store is the online feature store. Apply must be called from one
// goroutine at a time; reads are safe from any goroutine.
type Store struct {
	db        *pebble.DB
	plog      *PebbleLog // Pebble's logger; Failed after a fatal storage error
	cache     interface{ Unref() }
	halfMS    float64 // popularity half-life, ms
	affHalfMS float64 // category affinity half-life, ms
	weights   [numBehaviors]float64
	logWeight [numBehaviors]float64
	defs      *Definitions
	opts      Options
	deadCount atomic.Int64
	deadSeq   atomic.Uint64
	logger    *slog.Logger

	// life tracks open operations so that Close waits for reads in flight;
	// see acquire.
	life struct {
		sync.RWMutex
		closed bool
		ops    sync.WaitGroup
	}

	applyMu    sync.Mutex  // serializes Apply; guards the record caches, lastFlush and flushTimer
	lastFlush  time.Time   // start of the last periodic flush (maybeFlush)
	flushTimer *time.Timer // a checkpoint due after the last Apply (timedFlush); nil when none is pending
	// The caches hold the newest committed record of hot entities so that
	// Apply need not read them back from Pebble. Only Apply touches them.
	users *sizedlru.Cache[string, *UserRecord]
	items *sizedlru.Cache[string, *ItemRecord]
	// itemReads caches committed item records for readers (a
	// recommendation reads hundreds); Apply and Expire invalidate what
	// they commit.
	itemReads *readcache.Cache[*ItemRecord]
	// wins is the materialized window state of online reads (winstate.go);
	// nil when Options.WindowCacheBytes is negative.
	wins *winCache
	// dd holds the in-memory Bloom filters over applied event ids (see
	// dedup.go). A new id (the common case) is known to be new without a
	// Pebble lookup; a "maybe" is settled by Pebble. Only Apply touches it.
	dd *dedup
	// learner is Options.Learner (or nil); Apply and Expire call it.
	learner Learner
	// pub is the published state version (version.go): a snapshot of the
	// DB as of the last commit whose in-memory side is published too.
	// Pinned readers hold the read lock; a commit publishes under the
	// write lock.
	pub struct {
		sync.RWMutex
		snap *pebble.Snapshot
		// held counts the users of snap (the publication itself and the
		// Held scans of it); seq numbers the publications.
		held  *heldSnap
		seq   uint64
		pop   map[string]*popTree // the popularity index (popindex.go)
		trend trendPub            // the trending index (trendindex.go)
	}
	// pop and trend are the writer's popularity and trending indexes;
	// Apply and Expire change them after their commits.
	pop   *popIndex
	trend *trendIndex
	mu    struct {
		sync.RWMutex
		stats Stats
	}
}

// memTableSize is the size of the state's memtables. Without a WAL, a
// memtable flush is the state's checkpoint (see Open).
const memTableSize = 128 << 20

// memTables bounds the memtables the state holds at once (see Open).
const memTables = 4

// Open opens or creates the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.MemoryLimit > 0 {
		if _, err := SplitMemory(opts.MemoryLimit); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	opts.EnsureDefaults()
	if opts.SeenLimit > maxSeenLimit {
		return nil, fmt.Errorf("open store %s: seen limit %d is more than %d", dir, opts.SeenLimit, maxSeenLimit)
	}
	// Pebble reserves the memory of every memtable in the block cache. A
	// cache of CacheBytes alone is all reserved once two 128 MiB memtables
	// exist (one filling, one flushing), and from then on it holds no
	// block at all: every read decompressed its blocks from the files
	// again. So the memtables' share is added to CacheBytes.
	memtable := int64(memTableSize)
	if opts.memTableSize > 0 {
		memtable = opts.memTableSize
	}
	cache := pebble.NewCache(opts.CacheBytes + memTables*memtable)
	plog := NewPebbleLog(opts.Logger.With("component", "pebble"))
	popts := &pebble.Options{
		FS:                 opts.FS,
		Cache:              cache,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             plog,
		Merger:             newMerger(opts.SeenLimit, opts.Learner),
		MemTableSize:       uint64(memtable),
		// At most memTables memtables: this one filling, the ones queued
		// for flushing, and the one Pebble keeps to recycle.
		MemTableStopWritesThreshold: memTables - 2,
		// The state has no write-ahead log: it is derived from the event
		// log (or the Kafka topic), which is the durable copy, and its
		// applied offset lives in the same instance. Memtable flushes are
		// its checkpoints: after a crash the state is that of the last
		// flush, consistent with its offset, and the rest is applied again.
		// Without a WAL a failed write can only fail a flush (reported and
		// retried) instead of killing the process inside Pebble.
		DisableWAL: true,
	}
	// Bloom filters make the dedup check of a new event id (a miss) cheap.
	for i := range popts.Levels {
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		cache.Unref()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	if opts.Clock != "wall" && opts.Clock != "event" {
		_ = db.Close()
		cache.Unref()
		return nil, fmt.Errorf("open store %s: clock %q is neither wall nor event", dir, opts.Clock)
	}
	s := &Store{
		db: db, cache: cache, plog: plog, logger: opts.Logger, opts: opts, defs: opts.Definitions, learner: opts.Learner,
		halfMS:    float64(opts.PopularityHalfLife.Milliseconds()),
		affHalfMS: float64(opts.Definitions.AffinityHalfLife.Milliseconds()),
		weights:   opts.Definitions.BehaviorWeights,
	}
	for b, w := range s.weights {
		s.logWeight[b] = math.Log2(w)
	}
	rb := opts.RecordCacheBytes
	s.users = sizedlru.New[string](opts.RecordCacheEntries, rb*3/5, (*UserRecord).memSize)
	s.items = sizedlru.New[string](opts.RecordCacheEntries, rb/5, (*ItemRecord).memSize)
	s.itemReads = readcache.NewSized[*ItemRecord](opts.RecordCacheEntries, rb/5, (*ItemRecord).memSize)
	if opts.WindowCacheBytes > 0 {
		s.wins = newWinCache(s.defs, opts.WindowCacheBytes)
	}
	if err := s.loadMeta(); err != nil {
		_ = db.Close()
		cache.Unref()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	// The version readers see until the first commit.
	s.pub.held = &heldSnap{snap: db.NewSnapshot()}
	s.pub.held.refs.Store(1)
	s.pub.snap = s.pub.held.snap
	// Then the learner's state and what else Open reads from the DB.
	for _, load := range []func() error{s.loadPopIndex, s.loadTrendIndex, s.loadLearner, s.countDeadLetters, s.openDedup} {
		if err := load(); err != nil {
			_ = s.pub.snap.Close()
			_ = db.Close()
			cache.Unref()
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	return s, nil
}

func (s *Store) loadLearner() error {
	if s.learner == nil {
		return nil
	}
	return s.learner.Load(s)
}

// Close closes the store. It is safe to call twice.
func (s *Store) Close() error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.life.Lock()
	if s.life.closed {
		s.life.Unlock()
		return nil
	}
	s.life.closed = true
	s.life.Unlock()
	s.life.ops.Wait()
	if s.flushTimer != nil {
		s.flushTimer.Stop() // Close flushes below
		s.flushTimer = nil
	}
	var lerr error
	if s.learner != nil {
		lerr = s.learner.Close()
	}
	if s.pub.held != nil {
		s.pub.held.release() // closed now unless a Held still holds it
		s.pub.snap, s.pub.held = nil, nil
	}
	// Without a WAL the memtables are lost on close unless flushed; a
	// failed flush costs only a longer replay at the next open.
	if s.plog.Failed() == nil {
		if err := s.flush(); err != nil {
			s.logger.Warn("cannot flush the state before closing; the log is applied again at the next start", "err", err)
		}
	}
	err := s.db.Close()
	s.cache.Unref()
	return errors.Join(lerr, err)
}

// acquire registers an operation on the open store; it fails with
// ErrClosed once Close has begun. Every successful acquire must be paired
// with release. Operations may nest.
func (s *Store) acquire() error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.life.closed {
		return ErrClosed
	}
	s.life.ops.Add(1)
	return nil
}

func (s *Store) release() { s.life.ops.Done() }

func (s *Store) loadMeta() error {
	var st Stats
	if v, ok, err := s.get([]byte(keyApplied)); err != nil {
		return err
	} else if ok {
		if len(v) != 8 {
			return fmt.Errorf("%s: %w", keyApplied, ErrCorrupt)
		}
		st.AppliedOffset = binary.BigEndian.Uint64(v)
	}
	if v, ok, err := s.get([]byte(keyStats)); err != nil {
		return err
	} else if ok {
		d := codec.Decoder{B: v}
		d.Version(recordVersion)
		st.Events, st.Duplicates, st.Users, st.Items, st.MaxTS = d.Varint(), d.Varint(), d.Varint(), d.Varint(), d.Varint()
		if err := d.Done(); err != nil {
			return fmt.Errorf("%s: %w", keyStats, err)
		}
	}
	s.mu.stats = st
	return nil
}

// Stats returns the store's counters as of the last committed Apply.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.stats
}

// AppliedOffset is the log offset to resume applying from.
func (s *Store) AppliedOffset() uint64 { return s.Stats().AppliedOffset }

// get returns a copy of the value of k.
func (s *Store) get(k []byte) ([]byte, bool, error) {
	if err := s.acquire(); err != nil {
		return nil, false, err
	}
	defer s.release()
	return getFrom(s.db, k)
}

// getFrom returns a copy of the value of k in src (the DB or a snapshot).
func getFrom(src pebble.Reader, k []byte) ([]byte, bool, error) {
	v, closer, err := src.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	return out, true, closer.Close()
}

func (s *Store) has(k []byte) (bool, error) {
	if err := s.acquire(); err != nil {
		return false, err
	}
	defer s.release()
	_, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, closer.Close()
}

type itemState struct {
	rec     *ItemRecord
	oldPop  float64
	oldCat  string
	existed bool
}

// ApplyResult says what one Apply did.
type ApplyResult struct {
	Applied    int
	Duplicates int
}

// Apply applies entries, in log order, and records end as the new applied
// offset, all in one atomic batch. end must be past every entry's offset;
// offsets between entries that have no entry (skipped records) count as
// applied. Entries below AppliedOffset are skipped, so re-applying a prefix
// after a crash is harmless.
func (s *Store) Apply(end uint64, entries []Entry) (ApplyResult, error) {
	return s.ApplyLog(end, entries, nil)
}

// ApplyLog is Apply with the dead letters of the same run of log entries,
// written in the same batch, each under its own key (Seq is
// LogDeadLetterSeq of its log offset: re-applying the run after a crash
// rewrites the same keys, and dead letters below the applied offset are
// skipped like entries).
func (s *Store) ApplyLog(end uint64, entries []Entry, dead []DeadLetter) (ApplyResult, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if err := s.acquire(); err != nil {
		return ApplyResult{}, err
	}
	defer s.release()
	if len(dead) == 0 {
		return s.applyBatch(end, entries, nil)
	}
	lo := s.Stats().AppliedOffset
	extra := &Extra{embedded: true}
	for _, d := range dead {
		if d.Seq&^logDeadLetterBit >= lo { // below: applied before (a re-read prefix)
			extra.DeadLetters = append(extra.DeadLetters, d)
		}
	}
	return s.applyBatch(end, entries, extra)
}

// applyBatch runs apply (under applyMu and acquire) and keeps the dead
// letter count: a dead letter re-written after a crash replaces its own
// key and is counted once. After a failed batch it drops the decoded
// records the batch may have changed in place.
func (s *Store) applyBatch(end uint64, entries []Entry, extra *Extra) (ApplyResult, error) {
	var newDead int64
	if extra != nil {
		for _, d := range extra.DeadLetters {
			ok, err := s.has(deadKey(d.Received, d.Seq))
			if err != nil {
				return ApplyResult{}, fmt.Errorf("apply: %w", err)
			}
			if !ok {
				newDead++
			}
		}
	}
	res, err := s.apply(end, entries, extra, newDead)
	if err != nil {
		// Cached records may have been modified in place by the failed
		// batch: they are ahead of Pebble now.
		s.users.Purge()
		s.items.Purge()
		if s.learner != nil {
			if merr := s.learner.Abort(); merr != nil {
				err = errors.Join(err, merr)
			}
		}
		return res, err
	}
	return res, nil
}

// apply applies entries (and extra) in one batch; newDead is how many of
// extra's dead letters are new, counted when the batch is published.
func (s *Store) apply(end uint64, entries []Entry, extra *Extra, newDead int64) (ApplyResult, error) {
	st := s.Stats()
	var res ApplyResult
	b := s.db.NewBatch()
	defer b.Close()
	users := make(map[string]*UserRecord)
	items := make(map[string]*itemState)
	ids := newBatchIDs()
	newUsers := make(map[string]bool)
	var applied []*Event // in order, for the materialized windows
	var lb LearnBatch
	if s.learner != nil {
		lb = s.learner.Begin(&BatchRecords{s: s, items: items, newUsers: newUsers})
	}
	if end < st.AppliedOffset {
		return ApplyResult{}, fmt.Errorf("apply: end %d is before the applied offset %d", end, st.AppliedOffset)
	}
	lo, hi := st.AppliedOffset, end // entries of the embedded log
	if extra != nil && !extra.embedded {
		lo, hi = 0, math.MaxUint64 // an outside source's offsets (ApplyWith)
	}
	// 1. Deduplication, in order: the events the batch applies.
	maxTS := st.MaxTS
	var marks []dedupMark
	for i := range entries {
		en := &entries[i]
		if en.Offset < lo {
			continue
		}
		if en.Offset >= hi {
			return ApplyResult{}, fmt.Errorf("apply: entry offset %d is not below end %d", en.Offset, end)
		}
		ev := &en.Event
		dk, dv, dup, err := s.dedupEvent(ev, en.Offset, maxTS, ids)
		if err != nil {
			return ApplyResult{}, fmt.Errorf("apply: %w", err)
		}
		if dup {
			res.Duplicates++
			continue
		}
		if dk != nil {
			marks = append(marks, dedupMark{dk, dv})
		}
		applied = append(applied, ev)
		maxTS = max(maxTS, ev.TS)
	}
	// 2. Their dedup marks, tiles and seen records, on another core while
	// the records and models learn from them (neither reads them).
	tw := s.startTileWork(applied, marks)
	defer tw.close()
	// 3. The records and models, event by event.
	for _, ev := range applied {
		u, ok := users[ev.UserID]
		if !ok {
			var found bool
			var err error
			if u, found = s.users.Get(ev.UserID); !found {
				u = new(UserRecord)
				if found, err = s.readUser(ev.UserID, u); err != nil {
					return ApplyResult{}, fmt.Errorf("apply: user %q: %w", ev.UserID, err)
				}
			}
			if !found {
				st.Users++
				newUsers[ev.UserID] = true
			}
			users[ev.UserID] = u
		}
		it, ok := items[ev.ItemID]
		if !ok {
			it = new(itemState)
			var err error
			rec, found := s.items.Get(ev.ItemID)
			if !found {
				rec = &ItemRecord{Pop: math.Inf(-1)}
				if found, err = s.readItem(ev.ItemID, rec); err != nil {
					return ApplyResult{}, fmt.Errorf("apply: item %q: %w", ev.ItemID, err)
				}
			}
			if !found {
				st.Items++
			}
			it.rec, it.existed, it.oldPop, it.oldCat = rec, found, rec.Pop, rec.CategoryID
			items[ev.ItemID] = it
		}
		if lb != nil {
			if err := lb.Learn(ev, u, it.rec); err != nil {
				return ApplyResult{}, fmt.Errorf("apply: models: %w", err)
			}
		}
		u.add(ev.Behavior, ev.TS)
		u.RecentItems = pushRecent(u.RecentItems, ev.ItemID, ev.TS)
		u.RecentCategories = pushRecent(u.RecentCategories, ev.CategoryID, ev.TS)
		u.Affinities = pushAffinity(u.Affinities, ev.CategoryID, ev.TS, s.logWeight[ev.Behavior]+float64(ev.TS)/s.affHalfMS)

		it.rec.add(ev.Behavior, ev.TS)
		if ev.CategoryID != "" && ev.TS >= it.rec.CategoryTS {
			it.rec.CategoryID, it.rec.CategoryTS = ev.CategoryID, ev.TS
		}
		it.rec.Pop = LogAddExp2(it.rec.Pop, s.logWeight[ev.Behavior]+float64(ev.TS)/s.halfMS)

		if ev.Behavior == BehaviorPurchase {
			if err := b.Set(boughtKey(ev.UserID, ev.ItemID), nil, nil); err != nil {
				return ApplyResult{}, err
			}
		}
		st.MaxTS = max(st.MaxTS, ev.TS)
		res.Applied++
	}
	tiles, err := tw.wait()
	if err != nil {
		return ApplyResult{}, err
	}
	if err := b.Apply(tw.batch, nil); err != nil {
		return ApplyResult{}, err
	}
	var buf []byte
	var popChs []popChange
	// In key order, as tileWork writes.
	for _, id := range slices.Sorted(maps.Keys(users)) {
		buf = users[id].appendTo(buf[:0])
		if err := b.Set(userKey(id), buf, nil); err != nil {
			return ApplyResult{}, err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(items)) {
		it := items[id]
		buf = it.rec.appendTo(buf[:0])
		if err := b.Set(itemKey(id), buf, nil); err != nil {
			return ApplyResult{}, err
		}
		popChs = append(popChs, popChangeOf(id, it))
	}
	if lb != nil {
		if err := lb.Write(b); err != nil {
			return ApplyResult{}, err
		}
	}
	st.AppliedOffset = end
	st.Events += int64(res.Applied)
	st.Duplicates += int64(res.Duplicates)
	if err := b.Set([]byte(keyApplied), binary.BigEndian.AppendUint64(nil, st.AppliedOffset), nil); err != nil {
		return ApplyResult{}, err
	}
	if err := b.Set([]byte(keyStats), encodeStats(&st), nil); err != nil {
		return ApplyResult{}, err
	}
	if extra != nil {
		if err := extra.write(b); err != nil {
			return ApplyResult{}, err
		}
	}
	if err := s.rotateDedup(b, st.MaxTS); err != nil {
		return ApplyResult{}, err
	}
	// The log is the durable copy; state is rebuilt from it after a crash,
	// so the state commit need not wait for fsync.
	if err := s.plog.Guard(func() error { return b.Commit(pebble.NoSync) }); err != nil {
		return ApplyResult{}, fmt.Errorf("apply: commit: %w", err)
	}
	for id, u := range users {
		s.users.Add(id, u)
	}
	touched := make([]string, 0, len(items))
	var freshItems map[string]*ItemRecord // the readers' copies (Replace)
	for id, it := range items {
		s.items.Add(id, it.rec)
		touched = append(touched, id)
		if s.itemReads.Cached(id) {
			if freshItems == nil {
				freshItems = make(map[string]*ItemRecord)
			}
			rec := *it.rec
			freshItems[id] = &rec
		}
	}
	// The entities the batch touched, for the materialized window state.
	winTouched := func(fn func(winKey)) {
		for id := range users {
			fn(winKey{kindUser, id})
		}
		for id := range items {
			fn(winKey{kindItem, id})
		}
	}
	now := s.clock(st.MaxTS) // the read clock of the new version
	var winUps []winUpdate
	if s.wins != nil {
		winUps = s.wins.prepare(winTouched, applied, tiles, now, func(k winKey) []byte {
			if k.kind == kindUser {
				return users[k.id].appendTo(nil)
			}
			return items[k.id].rec.appendTo(nil)
		})
	}
	popTouched := s.pop.apply(popChs)
	s.trend.advance(floorTo(readTime(now), coarseTile))
	s.trend.add(applied)
	if s.opts.TestingAfterCommit != nil {
		s.opts.TestingAfterCommit()
	}
	// The new version: the snapshot and what readers share in memory.
	s.publish(s.db.NewSnapshot(), func() {
		if len(touched) > 0 {
			// Hot records change in most batches: readers get the new ones
			// rather than a miss.
			s.itemReads.Replace(touched, freshItems)
		}
		s.pub.pop = s.pop.published(s.pub.pop, popTouched)
		s.pub.trend = s.trend.published(s.pub.trend)
		if s.wins != nil {
			s.wins.install(winTouched, winUps)
		}
		if lb != nil {
			lb.Publish()
		}
		// The dead letter count before the stats: a reader of both (the
		// stats first) that sees the batch's offset sees its dead letters.
		s.deadCount.Add(newDead)
		s.mu.Lock()
		s.mu.stats = st
		s.mu.Unlock()
	})
	if lb != nil {
		lb.Commit()
	}
	s.maybeFlush()
	s.commitDedup(st.MaxTS)
	return res, nil
}

// tileWork builds the dedup marks, tiles and seen records of an apply
// batch's events in a goroutine of its own, into a Pebble batch that the
// apply batch takes in whole. They depend on the events alone, so they are
// the same whoever builds them; they are built beside the records and
// models, the longest part of an apply, on the other core.
//
// They are about three fifths of the apply batch's records, and are written
// in key order: Pebble inserts a batch into the memtable's skiplist record
// by record from the splice of the last insert, so a key just after the
// last one is found in a step or two, where a key anywhere else is
// searched from the top of a skiplist of up to 128 MiB, a cache miss per
// level (sorted, the commit of a batch of 16 Ki events costs half).
type tileWork struct {
	done  chan struct{}
	tiles *tileBatch
	batch *pebble.Batch
	err   error
}

// dedupMark is the dedup key and value of an applied event.
type dedupMark struct{ key, value []byte }

func (s *Store) startTileWork(applied []*Event, marks []dedupMark) *tileWork {
	tw := &tileWork{done: make(chan struct{}), tiles: newTileBatch(len(applied)), batch: s.db.NewBatch()}
	go func() {
		defer close(tw.done)
		slices.SortFunc(marks, func(a, b dedupMark) int { return bytes.Compare(a.key, b.key) })
		for _, m := range marks {
			if tw.err = tw.batch.Set(m.key, m.value, nil); tw.err != nil {
				return
			}
		}
		seen := newSeenBatch(s.opts.SeenLimit)
		for _, ev := range applied {
			tw.tiles.add(ev)
			seen.add(ev)
		}
		if tw.err = tw.tiles.flush(tw.batch); tw.err == nil {
			tw.err = seen.flush(tw.batch)
		}
	}()
	return tw
}

// wait waits for the work to end and returns its tiles.
func (tw *tileWork) wait() (*tileBatch, error) {
	<-tw.done
	return tw.tiles, tw.err
}

// close waits for the work to end and closes its batch, once the apply
// batch took it in or gave up.
func (tw *tileWork) close() {
	<-tw.done
	_ = tw.batch.Close()
}

// tileBatch combines the tile updates of one apply batch: one merge per
// tile, however many of the batch's events fall in it.
type tileBatch struct {
	events   map[string][]byte              // 5-minute tiles: event lists
	sums     map[string]*counts             // 1-hour tiles and hourly item counts
	sketches map[string]*hyperloglog.Sketch // hourly distinct-count sketches
}

// newTileBatch returns the tile updates of a batch of n events (the maps
// sized for them: each event touches up to 2 fine tiles, 4 counts and 2
// sketches, mostly shared with other events).
func newTileBatch(n int) *tileBatch {
	n = min(n, 1<<16)
	return &tileBatch{events: make(map[string][]byte, n), sums: make(map[string]*counts, 2*n), sketches: make(map[string]*hyperloglog.Sketch, n)}
}

func (tb *tileBatch) distinct(key []byte, value string) {
	sk, ok := tb.sketches[string(key)]
	if !ok {
		sk = newSketch()
		tb.sketches[string(key)] = sk
	}
	sk.Insert([]byte(value))
}

func (tb *tileBatch) count(key []byte, b Behavior) {
	c, ok := tb.sums[string(key)]
	if !ok {
		c = new(counts)
		tb.sums[string(key)] = c
	}
	c[b]++
}

// add records ev in the tiles of its user and item and in the hourly item
// counts of its category and of all items.
func (tb *tileBatch) add(ev *Event) {
	fine, coarse := floorTo(ev.TS, fineTile), floorTo(ev.TS, coarseTile)
	for _, e := range [...]struct {
		kind      byte
		id, other string
	}{{kindUser, ev.UserID, ev.ItemID}, {kindItem, ev.ItemID, ev.UserID}} {
		k := string(tileKey(resFine, e.kind, e.id, fine))
		tb.events[k] = appendEvent(tb.events[k], fine, ev.TS, ev.Behavior)
		tb.count(tileKey(resCoarse, e.kind, e.id, coarse), ev.Behavior)
		tb.distinct(tileKey(resDistinct, e.kind, e.id, coarse), e.other)
	}
	if ev.CategoryID != "" {
		tb.count(hourKey(ev.CategoryID, coarse, ev.ItemID), ev.Behavior)
	}
	tb.count(hourKey("", coarse, ev.ItemID), ev.Behavior)
}

// flush writes the batch's merges to b in key order (see tileWork).
func (tb *tileBatch) flush(b *pebble.Batch) error {
	type tile struct {
		key  string
		kind byte // 0 events, 1 sums, 2 sketches
	}
	keys := make([]tile, 0, len(tb.events)+len(tb.sums)+len(tb.sketches))
	for k := range tb.events {
		keys = append(keys, tile{k, 0})
	}
	for k := range tb.sums {
		keys = append(keys, tile{k, 1})
	}
	for k := range tb.sketches {
		keys = append(keys, tile{k, 2})
	}
	// The three maps have keys of different resolutions or prefixes, so
	// no key is in two of them.
	slices.SortFunc(keys, func(a, b tile) int { return strings.Compare(a.key, b.key) })
	var buf []byte
	for _, t := range keys {
		var v []byte
		switch t.kind {
		case 0:
			v = tb.events[t.key]
		case 1:
			buf = tb.sums[t.key].appendTo(buf[:0])
			v = buf
		default:
			var err error
			if v, err = tb.sketches[t.key].MarshalBinary(); err != nil {
				return err
			}
		}
		if err := b.Merge([]byte(t.key), v, nil); err != nil {
			return err
		}
	}
	return nil
}

// Now is the read clock in Unix ms: the wall clock, or with the event
// clock the newest event time applied.
func (s *Store) Now() int64 { return s.clock(s.Stats().MaxTS) }

// clock is the read clock when the newest event time applied is maxTS.
func (s *Store) clock(maxTS int64) int64 {
	if s.opts.Clock == "event" {
		return maxTS
	}
	return s.opts.Now().UnixMilli()
}

// Flush writes the memtables to disk. A flush that has not finished
// within Options.FlushWait (a failing or full disk: Pebble retries it in
// the background) is an error.
func (s *Store) Flush() error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	return s.flush()
}

func (s *Store) flush() error {
	var done <-chan struct{}
	if err := s.plog.Guard(func() (err error) { done, err = s.db.AsyncFlush(); return err }); err != nil {
		return fmt.Errorf("flush state: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(s.opts.FlushWait):
		return fmt.Errorf("flush state: not done after %s (is the disk full or failing?)", s.opts.FlushWait)
	}
}

// maybeFlush starts a flush of the memtables (a checkpoint) when the last
// one is older than Options.CheckpointInterval, or else makes sure one
// starts when it is due even if no Apply follows (so a burst followed by
// silence is durable an interval later, not at the next batch). Every
// flush is a consistent checkpoint: each apply batch commits atomically
// with its offset. Apply and timedFlush call it (under applyMu).
func (s *Store) maybeFlush() {
	if d := s.opts.CheckpointInterval - time.Since(s.lastFlush); d > 0 {
		if s.flushTimer == nil {
			s.flushTimer = time.AfterFunc(d, s.timedFlush)
		}
		return
	}
	s.startFlush()
}

// timedFlush is the checkpoint that maybeFlush scheduled. If an Apply's
// own flush came first (and batches may have followed it), maybeFlush
// schedules the next one instead.
func (s *Store) timedFlush() {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.flushTimer = nil
	if err := s.acquire(); err != nil {
		return // closed (Close flushed)
	}
	defer s.release()
	s.maybeFlush()
}

func (s *Store) startFlush() {
	s.lastFlush = time.Now()
	if err := s.plog.Guard(func() error { _, err := s.db.AsyncFlush(); return err }); err != nil {
		s.logger.Warn("cannot start a flush of the state", "err", err)
	}
}

// Failed is ErrStorage once Pebble reported a fatal error (writes are
// refused from then on); nil while the store is healthy.
func (s *Store) Failed() error { return s.plog.Failed() }

// Definitions returns the views the store serves.
func (s *Store) Definitions() *Definitions { return s.defs }

// encodeStats is the value of keyStats.
func encodeStats(st *Stats) []byte {
	e := codec.Encoder{B: []byte{recordVersion}}
	for _, v := range []int64{st.Events, st.Duplicates, st.Users, st.Items, st.MaxTS} {
		e.Varint(v)
	}
	return e.B
}

func (s *Store) readUser(id string, u *UserRecord) (bool, error) {
	v, ok, err := s.get(userKey(id))
	if err != nil || !ok {
		return false, err
	}
	return true, u.decode(v)
}

func (s *Store) readItem(id string, it *ItemRecord) (bool, error) {
	v, ok, err := s.get(itemKey(id))
	if err != nil || !ok {
		return false, err
	}
	return true, it.decode(v)
}

// User returns the record of user id (in the newest published version,
// like the Store's other read methods; pin a Version to read several
// records of one version).
func (s *Store) User(id string) (UserRecord, bool, error) {
	v, err := s.Pin()
	if err != nil {
		return UserRecord{}, false, err
	}
	defer v.Release()
	return v.User(id)
}

// Item returns the record of item id.
func (s *Store) Item(id string) (ItemRecord, bool, error) {
	v, err := s.Pin()
	if err != nil {
		return ItemRecord{}, false, err
	}
	defer v.Release()
	return v.Item(id)
}

// Purchased reports whether user bought item.
func (s *Store) Purchased(user, item string) (bool, error) {
	return pinned(s, func(v *Version) (bool, error) { return v.Purchased(user, item) })
}

// PurchasedItems returns the items user bought, read in one scan, when
// there are at most limit; complete is false (and items nil) when there
// are more, and the caller asks Purchased item by item.
func (s *Store) PurchasedItems(user string, limit int) (items map[string]bool, complete bool, err error) {
	v, err := s.Pin()
	if err != nil {
		return nil, false, err
	}
	defer v.Release()
	return v.PurchasedItems(user, limit)
}

// PopularityScore converts a stored Pop value into the decayed weighted
// count as of the newest event time seen.
func (s *Store) PopularityScore(pop float64) float64 {
	return s.PopularityAt(pop, s.Stats().MaxTS)
}

// PopularityAt converts a stored Pop value into the decayed weighted count
// as of time now (Unix ms).
func (s *Store) PopularityAt(pop float64, now int64) float64 {
	if math.IsInf(pop, -1) {
		return 0
	}
	return math.Exp2(pop - float64(now)/s.halfMS)
}

// Popular returns up to k items of category ("" for all) by descending
// popularity, skipping those for which skip returns true.
func (s *Store) Popular(category string, k int, skip func(item string) bool) ([]Scored, error) {
	return pinned(s, func(v *Version) ([]Scored, error) { return v.Popular(category, k, skip) })
}

// PebbleLog adapts a slog.Logger to Pebble's logger: Pebble's chatty info
// messages become debug records. Pebble calls Fatalf when it cannot go on
// (a WAL write or sync that failed, a MANIFEST it cannot write); instead
// of panicking, PebbleLog records the first such error, and the owner of
// the instance checks Failed after every write and refuses writes from
// then on. A restart recovers from what was synced.
type PebbleLog struct {
	l     *slog.Logger
	fatal atomic.Pointer[string]
}

// NewPebbleLog returns a PebbleLog writing to l.
func NewPebbleLog(l *slog.Logger) *PebbleLog { return &PebbleLog{l: l} }

func (p *PebbleLog) Infof(format string, args ...any) { p.l.Debug(fmt.Sprintf(format, args...)) }

func (p *PebbleLog) Errorf(format string, args ...any) { p.l.Error(fmt.Sprintf(format, args...)) }

func (p *PebbleLog) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.fatal.CompareAndSwap(nil, &msg)
	p.l.Error("storage failed; writes are refused until a restart", "err", msg)
}

// Failed is ErrStorage with Pebble's fatal message once there was one.
func (p *PebbleLog) Failed() error {
	if m := p.fatal.Load(); m != nil {
		return fmt.Errorf("%w: %s", ErrStorage, *m)
	}
	return nil
}

// Guard runs a write of Pebble (a batch commit) and returns its error, or
// ErrStorage when Pebble failed during it or before: after a failed WAL
// write Pebble reports success (having called Fatalf) or panics on the
// next write, and both must reach the caller as an error.
func (p *PebbleLog) Guard(write func() error) (err error) {
	if err := p.Failed(); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			msg := fmt.Sprint(r)
			p.fatal.CompareAndSwap(nil, &msg)
			err = fmt.Errorf("%w: %v", ErrStorage, r)
		}
	}()
	err = write()
	if ferr := p.Failed(); ferr != nil {
		return ferr
	}
	return err
}

// PebbleStats are the figures of Pebble that recsys exports as metrics.
type PebbleStats struct {
	DiskBytes   uint64
	Compactions int64
	CacheHits   int64
	CacheMisses int64
}

// PebbleStats returns Pebble's disk use, compaction and cache counters.
func (s *Store) PebbleStats() (PebbleStats, error) {
	if err := s.acquire(); err != nil {
		return PebbleStats{}, err
	}
	defer s.release()
	m := s.db.Metrics()
	return PebbleStats{DiskBytes: m.DiskSpaceUsage(), Compactions: m.Compact.Count, CacheHits: m.BlockCache.Hits, CacheMisses: m.BlockCache.Misses}, nil
}

// Checkpoint writes a consistent copy of the store to dir (which must not
// exist), hard-linking its files where it can.
func (s *Store) Checkpoint(dir string) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	// The memtables hold the newest state (there is no WAL): flush them
	// so that the checkpoint is current.
	err := s.flush()
	if err == nil {
		err = s.plog.Guard(func() error { return s.db.Checkpoint(dir) })
	}
	if err != nil {
		// No half-written checkpoint is left behind.
		_ = s.opts.FS.RemoveAll(dir)
		return fmt.Errorf("checkpoint store: %w", err)
	}
	return nil
}

// Compact compacts the whole key space into the bottom level: merge
// operands are folded and deleted data dropped. For tests and offline
// maintenance; it competes with Apply for the disk.
func (s *Store) Compact(ctx context.Context) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	if err := s.plog.Guard(func() error { return s.db.Compact(ctx, []byte{0}, []byte{0xff}, true) }); err != nil {
		return fmt.Errorf("compact state: %w", err)
	}
	return nil
}

// RecordBytes estimates the disk bytes of the records of view v.
func (s *Store) RecordBytes(v *View) (uint64, error) {
	if v.prefix == nil {
		return 0, nil
	}
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	return s.db.EstimateDiskUsage(v.prefix, prefixEnd(v.prefix))
}
