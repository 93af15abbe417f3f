package updater

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater/eventlog"
)

// Options configures an Updater. Zero fields take the documented defaults.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// ApplyBatch is the most log entries applied in one store batch.
	// Default 16384.
	ApplyBatch int
	// MaxFutureSkew is how far past the clock an event time may be.
	// Default 5m.
	MaxFutureSkew time.Duration
	// AllowedLateness is how far behind the newest event time an event may
	// be: older events are rejected as late. Default 1h.
	AllowedLateness time.Duration
	// Now is the wall clock. Default time.Now.
	Now func() time.Time
	// Registerer receives the updater's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// Publisher, when set, replaces the embedded log: Ingest hands it the
	// valid events (normalized) and the dead letters of future ones, and
	// acknowledges once it has taken both. The watermark is then checked by
	// whoever consumes what it published (updater/kafka), so Ingest
	// rejects only invalid and future events.
	Publisher Publisher
	// DiskFree, when set, returns the free bytes of the data dir's
	// filesystem. Below MinFreeBytes ingest is refused with ErrDiskFull
	// (nothing is acknowledged that could not be made durable), and below
	// half of it the apply loop waits, so that Pebble never meets a full
	// disk in the middle of a write; both resume by themselves when space
	// returns.
	DiskFree     func() (uint64, error)
	MinFreeBytes uint64
}

// Publisher is where ingest sends its output instead of the embedded log
// (kafka.Producer: the topic). The dead letters go the same way as the
// events, so that the consumer keeps them exactly once with the state, as
// the embedded log's are, and a rebuild from the topic has them too.
type Publisher interface {
	// Publish returns once events are durable.
	Publish(ctx context.Context, events []*recsysv1.Event) error
	// PublishDeadLetters returns once dead are durable.
	PublishDeadLetters(ctx context.Context, dead []*recsysv1.DeadLetter) error
}

// ErrDiskFull is returned by Ingest while the data dir's filesystem has
// less free space than Options.MinFreeBytes.
var ErrDiskFull = errors.New("updater: disk full")

// diskFullError says how full the disk is; it is ErrDiskFull.
type diskFullError struct{ free, min uint64 }

func (e *diskFullError) Error() string {
	return fmt.Sprintf("disk: %d MiB free on the data dir's filesystem, below the %d MiB ingest needs (ingest.min-free-bytes); ingest resumes when space is freed",
		e.free>>20, e.min>>20)
}

func (e *diskFullError) Is(target error) bool { return target == ErrDiskFull }

// DiskFull returns ErrDiskFull (with the figures) while the data dir's
// filesystem is below Options.MinFreeBytes, else nil.
func (u *Updater) DiskFull() error {
	if free, ok := u.freeBytes(); ok && free < u.opts.MinFreeBytes {
		return &diskFullError{free, u.opts.MinFreeBytes}
	}
	return nil
}

// freeBytes returns the free bytes of the data dir's filesystem (and
// records them in the metric); ok is false when there is no check or the
// figure is unknown (then the writes themselves tell).
func (u *Updater) freeBytes() (free uint64, ok bool) {
	if u.opts.DiskFree == nil || u.opts.MinFreeBytes == 0 {
		return 0, false
	}
	free, err := u.opts.DiskFree()
	if err != nil {
		return 0, false
	}
	u.m.diskFree.Set(float64(free))
	return free, true
}

// Failed is featurestore.ErrStorage once the log or the store could not
// write; nil while both are healthy.
func (u *Updater) Failed() error {
	return errors.Join(u.log.Failed(), u.store.Failed())
}

func (o *Options) ensureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ApplyBatch <= 0 {
		o.ApplyBatch = 16384
	}
	if o.MaxFutureSkew <= 0 {
		o.MaxFutureSkew = 5 * time.Minute
	}
	if o.AllowedLateness <= 0 {
		o.AllowedLateness = time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Updater validates and logs incoming events and applies the log to the
// feature store.
type Updater struct {
	log   *eventlog.Log
	store *featurestore.Store
	opts  Options

	mu struct {
		sync.Mutex
		applied chan struct{} // closed and replaced after each applied batch
	}
	// ingestMu orders the watermark check of concurrent ingests.
	ingestMu sync.Mutex
	maxTS    int64 // newest event time accepted; guarded by ingestMu

	// acked remembers when each ingest was acknowledged, by the log end it
	// reached, to observe freshness once it is applied.
	ackMu sync.Mutex
	acked []ack

	m metrics
}

type ack struct {
	end uint64
	at  time.Time
}

type metrics struct {
	events    *prometheus.CounterVec
	apply     prometheus.Histogram
	freshness prometheus.Histogram
	diskFree  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		diskFree: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "recsys_disk_free_bytes",
			Help: "Free bytes of the data dir's filesystem at the last check (ingest, apply, readiness); below ingest.min-free-bytes ingest is refused (507).",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "recsys_ingest_events_total",
			Help: "Events received by ingest, by result (accepted, rejected) and rejection code.",
		}, []string{"result", "code"}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "recsys_updater_apply_duration_seconds",
			Help:    "Time to apply one batch of log entries to the store.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		freshness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "recsys_updater_freshness_seconds",
			Help:    "Time from an ingest's acknowledgement to its events being readable.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.apply, m.freshness, m.diskFree)
	}
	return m
}

// New returns an Updater over log and store. Call Run to apply.
func New(log *eventlog.Log, store *featurestore.Store, opts Options) *Updater {
	opts.ensureDefaults()
	// The newest event time accepted is that of the log (whose tail may
	// not be applied yet) or of the store (fed by another log before).
	u := &Updater{log: log, store: store, opts: opts, maxTS: max(store.Stats().MaxTS, log.Mark()), m: newMetrics(opts.Registerer)}
	u.mu.applied = make(chan struct{})
	return u
}

// IngestResult is the outcome of Ingest.
type IngestResult struct {
	Accepted int
	Rejected []*recsysv1.Rejection
	// End is the log offset after the accepted events: once the store's
	// applied offset reaches it they are readable (see WaitApplied).
	End uint64
}

// Ingest validates events and makes the valid ones durable. index[i] is the
// position of events[i] in the caller's batch, used in rejections; nil
// means the identity. An error means nothing was appended.
func (u *Updater) Ingest(ctx context.Context, events []*recsysv1.Event, index []int) (IngestResult, error) {
	var res IngestResult
	if u.opts.Publisher == nil {
		if err := u.DiskFull(); err != nil {
			u.m.events.WithLabelValues("refused", "disk_full").Add(float64(len(events)))
			return IngestResult{}, err
		}
	}
	now := u.opts.Now()
	recs := make([][]byte, 0, len(events))
	var dead []*recsysv1.DeadLetter // published (Kafka mode)
	var pubs []*recsysv1.Event
	u.ingestMu.Lock()
	for i, ev := range events {
		pos := i
		if index != nil {
			pos = index[i]
		}
		norm, ferr := Normalize(ev, now, u.opts.MaxFutureSkew)
		if ferr == nil && u.opts.Publisher == nil {
			if wm, late := Late(norm.TS, u.maxTS, u.opts.AllowedLateness); late {
				ferr = fieldErr("ts", CodeLate, "%s is older than the watermark %s (newest event time %s minus the allowed lateness %s)",
					fmtTS(norm.TS), fmtTS(wm), fmtTS(u.maxTS), u.opts.AllowedLateness)
			}
		}
		if ferr != nil {
			res.Rejected = append(res.Rejected, rejection(pos, ferr))
			if ferr.Code == CodeLate || ferr.Code == CodeFuture {
				// Through the log (or the topic), like the events: durable
				// with them, applied exactly once, rebuilt with the state.
				dl := &recsysv1.DeadLetter{Event: ev, Code: ferr.Code, Reason: ferr.Error(), ReceivedAt: timestamppb.New(now)}
				if u.opts.Publisher != nil {
					dead = append(dead, dl)
					continue
				}
				d, err := proto.Marshal(dl)
				if err != nil {
					u.ingestMu.Unlock()
					return IngestResult{}, fmt.Errorf("ingest: encode dead letter: %w", err)
				}
				recs = append(recs, append([]byte{deadLetterMark}, d...))
			}
			continue
		}
		u.maxTS = max(u.maxTS, norm.TS)
		if u.opts.Publisher != nil {
			pubs = append(pubs, toProto(&norm))
			continue
		}
		rec, err := proto.Marshal(toProto(&norm))
		if err != nil {
			u.ingestMu.Unlock()
			return IngestResult{}, fmt.Errorf("ingest: encode event %d: %w", pos, err)
		}
		recs = append(recs, rec)
	}
	// The log takes the records in the order of this lock, so every event
	// in it is within the lateness of every event before it (the store
	// keeps the dedup state of derived ids only that long); the mark keeps
	// the newest accepted time across a restart.
	var pending *eventlog.Pending
	if len(recs) > 0 {
		var err error
		if pending, err = u.log.Enqueue(ctx, recs, u.maxTS); err != nil {
			u.ingestMu.Unlock()
			return IngestResult{}, fmt.Errorf("ingest: %w", err)
		}
	}
	u.ingestMu.Unlock()
	for _, r := range res.Rejected {
		u.m.events.WithLabelValues("rejected", r.Code).Inc()
	}
	if len(dead) > 0 {
		if err := u.opts.Publisher.PublishDeadLetters(ctx, dead); err != nil {
			return IngestResult{}, fmt.Errorf("ingest: %w", err)
		}
	}
	if len(pubs) > 0 {
		if err := u.opts.Publisher.Publish(ctx, pubs); err != nil {
			return IngestResult{}, fmt.Errorf("ingest: %w", err)
		}
		res.Accepted = len(pubs)
		u.m.events.WithLabelValues("accepted", "").Add(float64(res.Accepted))
	}
	if len(recs) == 0 {
		res.End = u.log.End()
		return res, nil
	}
	first, err := pending.Wait(ctx)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			err = errors.Join(ErrDiskFull, err)
		}
		return IngestResult{}, fmt.Errorf("ingest: %w", err)
	}
	for _, r := range recs {
		if r[0] != deadLetterMark {
			res.Accepted++
		}
	}
	res.End = first + uint64(len(recs))
	u.m.events.WithLabelValues("accepted", "").Add(float64(res.Accepted))
	u.ackMu.Lock()
	if len(u.acked) < 100_000 {
		u.acked = append(u.acked, ack{res.End, time.Now()})
	}
	u.ackMu.Unlock()
	return res, nil
}

// mark is the applied offset at a daily expiry and the store clock then.
type mark struct {
	at      int64
	applied uint64
}

// marksKey names the truncation marks among the log's meta values.
const marksKey = "truncation-marks"

// maxMarks bounds the marks kept (one a day; the retention is at most a
// few weeks).
const maxMarks = 400

func encodeMarks(ms []mark) []byte {
	var b []byte
	for _, m := range ms {
		b = binary.AppendVarint(b, m.at)
		b = binary.AppendUvarint(b, m.applied)
	}
	return b
}

// loadMarks reads the marks that an earlier run stored.
func (u *Updater) loadMarks() ([]mark, error) {
	b, ok, err := u.log.Meta(marksKey)
	if err != nil || !ok {
		return nil, err
	}
	var ms []mark
	for len(b) > 0 && len(ms) < maxMarks {
		at, n := binary.Varint(b)
		if n <= 0 {
			return nil, fmt.Errorf("log meta %s: corrupt", marksKey)
		}
		b = b[n:]
		applied, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, fmt.Errorf("log meta %s: corrupt", marksKey)
		}
		b = b[n:]
		ms = append(ms, mark{at, applied})
	}
	return ms, nil
}

// diskLow reports whether the free space is below half of MinFreeBytes.
func (u *Updater) diskLow() bool {
	free, ok := u.freeBytes()
	return ok && free < u.opts.MinFreeBytes/2
}

// deadLetterMark starts a log record that holds a DeadLetter instead of
// an Event. No Event encoding starts with it: 0 is no protobuf tag (field
// numbers start at 1), and a stored event is never empty.
const deadLetterMark = 0x00

// Watermark returns the newest event time accepted and the watermark:
// events older than the watermark are rejected as late. Both are 0 before
// the first event (nothing is late then).
func (u *Updater) Watermark() (maxTS, watermark int64) {
	u.ingestMu.Lock()
	defer u.ingestMu.Unlock()
	if u.maxTS == 0 {
		return 0, 0
	}
	return u.maxTS, u.maxTS - u.opts.AllowedLateness.Milliseconds()
}

const dayMS = 24 * 60 * 60 * 1000

func fmtTS(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }

// Backup writes a consistent copy of the data dir to dir: the store first,
// then the log, so the copy's applied offset is never past its log end;
// serving a copy resumes applying from the store's offset.
func (u *Updater) Backup(dir string) (err error) {
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("backup: %s exists", dir)
	}
	if err := u.DiskFull(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer func() {
		if err != nil {
			// A failed backup leaves nothing behind that could be taken
			// for a checkpoint.
			_ = os.RemoveAll(dir)
		}
	}()
	if err := u.store.Checkpoint(filepath.Join(dir, "state")); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := u.log.Checkpoint(filepath.Join(dir, "log")); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

// LogEnd is the offset after the last durable event.
func (u *Updater) LogEnd() uint64 { return u.log.End() }

// Run applies the log to the store until ctx is done. It returns nil on
// cancellation (or once the log is closed) and the first error otherwise.
func (u *Updater) Run(ctx context.Context) error {
	// The marks remember the applied offset at each daily expiry, to
	// truncate the log once a mark is older than the retention. They are
	// kept in the log itself, so that a server restarted every day still
	// truncates.
	marks, err := u.loadMarks()
	if errors.Is(err, eventlog.ErrClosed) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("updater: %w", err)
	}
	src := &logSource{u: u, next: u.store.AppliedOffset(), marks: marks}
	return Apply(ctx, u.store, src, LoopOptions{Logger: u.opts.Logger, MaxBatch: u.opts.ApplyBatch,
		ApplyDuration: u.m.apply, Freshness: u.m.freshness, DiskLow: u.diskLow})
}

// logSource is the embedded log as the apply loop's source: it reads the
// log from the store's applied offset on.
type logSource struct {
	u     *Updater
	next  uint64 // offset of the next record to read
	ev    recsysv1.Event
	marks []mark
}

func (s *logSource) Next(ctx context.Context, max int) (*Batch, error) {
	u := s.u
	if err := u.log.Wait(ctx, s.next); err != nil {
		switch {
		case ctx.Err() != nil:
			return nil, nil
		case errors.Is(err, eventlog.ErrClosed):
			return nil, ErrSourceEnd
		}
		return nil, fmt.Errorf("updater: %w", err)
	}
	b := &Batch{Log: true}
	end, err := u.log.Read(s.next, max, func(off uint64, rec []byte) error {
		if len(rec) > 0 && rec[0] == deadLetterMark {
			var dl recsysv1.DeadLetter
			if err := proto.Unmarshal(rec[1:], &dl); err != nil {
				u.opts.Logger.Error("skipping undecodable dead letter in the log", "offset", off, "err", err)
				return nil
			}
			b.Dead = append(b.Dead, featurestore.DeadLetter{Received: dl.GetReceivedAt().AsTime().UnixMilli(),
				Seq: featurestore.LogDeadLetterSeq(off), Record: slices.Clone(rec[1:])})
			return nil
		}
		if err := proto.Unmarshal(rec, &s.ev); err != nil {
			// Records are validated before they are appended, so this is
			// corruption on disk: skip the record rather than stall.
			u.opts.Logger.Error("skipping undecodable log record", "offset", off, "err", err)
			return nil
		}
		norm, ferr := Normalize(&s.ev, time.UnixMilli(s.ev.Ts), 0)
		if ferr != nil {
			u.opts.Logger.Error("skipping invalid log record", "offset", off, "err", ferr)
			return nil
		}
		b.Entries = append(b.Entries, featurestore.Entry{Offset: off, Event: norm})
		return nil
	})
	if err != nil {
		if errors.Is(err, eventlog.ErrClosed) {
			return nil, ErrSourceEnd
		}
		return nil, fmt.Errorf("updater: read log at %d: %w", s.next, err)
	}
	b.Records, b.LogEnd = int(end-s.next), end
	s.next = end
	return b, nil
}

// Committed returns the acknowledgement times of the ingests the batch
// completed, and wakes WaitApplied.
func (s *logSource) Committed(b *Batch, _ featurestore.ApplyResult) ([]time.Time, error) {
	u := s.u
	var since []time.Time
	u.ackMu.Lock()
	i := 0
	for ; i < len(u.acked) && u.acked[i].end <= b.LogEnd; i++ {
		since = append(since, u.acked[i].at)
	}
	u.acked = append(u.acked[:0], u.acked[i:]...)
	u.ackMu.Unlock()
	u.mu.Lock()
	close(u.mu.applied)
	u.mu.applied = make(chan struct{})
	u.mu.Unlock()
	return since, nil
}

// truncate removes the log records applied more than the retention ago:
// each daily expiry leaves a mark (the applied offset then), and the log is
// cut at the newest mark older than the retention.
func (s *logSource) truncate(dayStart, retention int64, b *Batch) error {
	s.marks = append(s.marks, mark{dayStart, b.LogEnd})
	keep := dayStart - retention
	i := 0
	for i < len(s.marks) && s.marks[i].at <= keep {
		i++
	}
	if i > 0 {
		if err := s.u.log.TruncateBefore(s.marks[i-1].applied); err != nil {
			return err
		}
		s.marks = s.marks[i:]
	}
	return s.u.log.PutMeta(marksKey, encodeMarks(s.marks))
}

// WaitApplied blocks until every log entry below off is applied or ctx is
// done.
func (u *Updater) WaitApplied(ctx context.Context, off uint64) error {
	for {
		u.mu.Lock()
		ch := u.mu.applied
		u.mu.Unlock()
		if u.store.AppliedOffset() >= off {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
