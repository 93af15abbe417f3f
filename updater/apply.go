package updater

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/streamrec/recsys/featurestore"
)

// A Source feeds the apply loop (Apply): the embedded event log (Run) or
// an outside one such as a Kafka topic (updater/kafka). It decodes and
// validates its records; the loop commits them, expires and measures.
type Source interface {
	// Next returns a batch of at most max records that follow the ones
	// it returned before (whether or not those are committed yet: the
	// loop reads the next batch while it applies the current one). It
	// waits for the first record until ctx is done, and then returns
	// nil, nil: a cancelled ctx means "stop waiting", never "drop what
	// you read". ErrSourceEnd says the source has nothing more to give.
	Next(ctx context.Context, max int) (*Batch, error)
	// Committed is called with every batch once the store has committed
	// it, in order, with the store's result. It returns the instants that
	// the freshness of the batch's readable events counts from (besides
	// the batch's Since). ErrSourceEnd ends the loop after this batch.
	Committed(b *Batch, res featurestore.ApplyResult) ([]time.Time, error)
}

// ErrSourceEnd is returned by a Source that has nothing more to give (a
// rebuild that reached its stop offsets): Apply then returns nil.
var ErrSourceEnd = errors.New("updater: end of source")

// Batch is what a Source hands the apply loop: the decoded entries and the
// dead letters of the records it read, and where the source stands after
// them. The loop commits all of it in one atomic store batch, so the
// positions always agree with the state: after a crash the source resumes
// exactly where the state stops.
//
// Batches that the loop merges (while one applies, the next ones read are
// appended to each other) keep their order: entries and dead letters are
// concatenated, Meta too (a later value of a key replaces an earlier one
// within the store batch), and LogEnd is the later one.
type Batch struct {
	Entries []featurestore.Entry
	// Dead are the dead letters of the records read, each under a key
	// derived from its position, so a record read again after a crash
	// rewrites its own dead letter (exactly once).
	Dead []featurestore.DeadLetter
	// Records is how many source records the batch covers (entries, dead
	// letters and records skipped as corrupt or already applied).
	Records int
	// Log says the batch comes from the embedded event log: LogEnd is the
	// offset after it, the store's applied offset once it commits. An
	// outside source instead keeps its own positions (say, one offset per
	// partition) as Meta values written with the state.
	Log    bool
	LogEnd uint64
	Meta   []featurestore.KV
	// Since holds, for the readable entries, the instants their freshness
	// counts from when the source knows them when reading (a Kafka record's
	// timestamp); Committed returns the others.
	Since []time.Time
	// Took is the time the source spent on the batch after the records
	// arrived (decoding, validation, dead letters sent elsewhere); the
	// apply duration metric counts it with the store batch.
	Took time.Duration
}

func (b *Batch) merge(o *Batch) {
	b.Entries = append(b.Entries, o.Entries...)
	b.Dead = append(b.Dead, o.Dead...)
	b.Records += o.Records
	b.Log = b.Log || o.Log
	b.LogEnd = max(b.LogEnd, o.LogEnd)
	b.Meta = append(b.Meta, o.Meta...)
	b.Since = append(b.Since, o.Since...)
	b.Took += o.Took
}

// LoopOptions configures Apply. Zero fields take the documented defaults.
type LoopOptions struct {
	Logger *slog.Logger // default slog.Default()
	// MaxBatch is the most source records applied in one store batch.
	// Default 16384.
	MaxBatch int
	// ApplyDuration and Freshness receive, per batch, the time to apply it
	// and, per readable event, the time from its Since instant to its
	// commit. The sources name them (their metric names are part of the
	// interface); nil observes nothing.
	ApplyDuration prometheus.Observer
	Freshness     prometheus.Observer
	// DiskLow, when set, makes the loop wait (checking every second)
	// before applying while it returns true, so that Pebble never meets a
	// full disk in the middle of a write.
	DiskLow func() bool
	// OnBatch, when set, is called after every committed batch with the
	// records it covered and the freshness of its readable events; tools
	// measure with it.
	OnBatch func(records int, freshness []time.Duration)
}

func (o *LoopOptions) ensureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 16384
	}
}

// truncater is a source that drops what the store no longer needs: once a
// day, after the store's expiry, with the day's start (Unix ms), the
// retention and the batch just committed.
type truncater interface {
	truncate(dayStart, retention int64, b *Batch) error
}

// Apply is the apply loop: it commits the batches of src to store until ctx
// is done (then it returns nil) or src ends, and returns the first error of
// the source or the store. While a batch applies, the next records are read
// and decoded (up to MaxBatch), so that decoding overlaps applying and
// what arrives during a long batch goes into the next one at once.
//
// Once a day of the store's clock, after a batch, it removes what is past
// the TTL (Store.Expire at the day's start, so that expiring again the same
// day, after a restart, removes nothing more and the state does not depend
// on when the process restarted), and lets the source truncate.
func Apply(ctx context.Context, store *featurestore.Store, src Source, o LoopOptions) error {
	o.ensureDefaults()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan *Batch)
	readErr := make(chan error, 1)
	go func() { readErr <- read(ctx, src, o.MaxBatch, batches) }()
	// Run returns only after the reader has.
	defer func() { cancel(); <-readErr }()
	var lastExpiry int64
	for {
		var b *Batch
		select {
		case b = <-batches:
		case err := <-readErr:
			readErr <- err // for the deferred wait
			if ctx.Err() != nil || errors.Is(err, ErrSourceEnd) {
				return nil
			}
			return err
		}
		for waited := false; o.DiskLow != nil && o.DiskLow(); waited = true {
			if !waited {
				o.Logger.Warn("the data dir's filesystem is nearly full; applying waits for free space")
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		start := time.Now()
		var res featurestore.ApplyResult
		var err error
		if b.Log {
			res, err = store.ApplyLog(b.LogEnd, b.Entries, b.Dead)
		} else {
			res, err = store.ApplyWith(b.Entries, featurestore.Extra{Meta: b.Meta, DeadLetters: b.Dead})
		}
		if err != nil {
			return fmt.Errorf("updater: %w", err)
		}
		done := time.Now()
		if o.ApplyDuration != nil {
			o.ApplyDuration.Observe((b.Took + done.Sub(start)).Seconds())
		}
		since, cerr := src.Committed(b, res)
		if cerr != nil && !errors.Is(cerr, ErrSourceEnd) {
			return cerr
		}
		var fresh []time.Duration
		if o.OnBatch != nil {
			fresh = make([]time.Duration, 0, len(b.Since)+len(since))
		}
		for _, ts := range [][]time.Time{b.Since, since} {
			for _, t := range ts {
				d := done.Sub(t)
				if o.Freshness != nil {
					o.Freshness.Observe(d.Seconds())
				}
				if fresh != nil {
					fresh = append(fresh, d)
				}
			}
		}
		if day := store.Now() / dayMS; day != lastExpiry {
			lastExpiry = day
			if _, err := store.Expire(day * dayMS); err != nil {
				return fmt.Errorf("updater: %w", err)
			}
			if t, ok := src.(truncater); ok {
				if err := t.truncate(day*dayMS, store.Retention(), b); err != nil {
					return fmt.Errorf("updater: %w", err)
				}
			}
		}
		if o.OnBatch != nil {
			o.OnBatch(b.Records, fresh)
		}
		if cerr != nil {
			return nil // ErrSourceEnd
		}
	}
}

// read hands the batches of src to out, merging what it reads while the
// loop is busy into one pending batch of at most max records.
func read(ctx context.Context, src Source, max int, out chan<- *Batch) error {
	type result struct {
		b   *Batch
		err error
	}
	var pend *Batch
	for {
		if pend == nil {
			b, err := src.Next(ctx, max)
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if b != nil && b.Records > 0 {
				pend = b
			}
			continue
		}
		if pend.Records >= max {
			select {
			case out <- pend:
				pend = nil
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Read more until the loop takes what is pending: the wait for
		// more is cut short then, and what it read is the next batch.
		wctx, stop := context.WithCancel(ctx)
		got := make(chan result, 1)
		room := max - pend.Records
		go func() {
			b, err := src.Next(wctx, room)
			got <- result{b, err}
		}()
		var r result
		select {
		case out <- pend:
			pend = nil
			stop()
			r = <-got
		case r = <-got:
			stop()
		}
		if errors.Is(r.err, ErrSourceEnd) && pend != nil {
			// What was read before the end is applied first.
			select {
			case out <- pend:
			case <-ctx.Done():
				return ctx.Err()
			}
			return r.err
		}
		if r.err != nil {
			return r.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.b != nil && r.b.Records > 0 {
			if pend == nil {
				pend = r.b
			} else {
				pend.merge(r.b)
			}
		}
	}
}
