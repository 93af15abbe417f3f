package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamrec/recsys/featurestore"
	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
)

// Headers of dead-letter records.
const (
	HeaderReason          = "recsys-reason"           // stable code: undecodable, late, future, missing, ...
	HeaderError           = "recsys-error"            // the field and the reason, for humans
	HeaderSourceTopic     = "recsys-source-topic"     //
	HeaderSourcePartition = "recsys-source-partition" // decimal
	HeaderSourceOffset    = "recsys-source-offset"    // decimal
)

// CodeUndecodable is the dead-letter reason of a value that is not an
// event in its content type (or names an unknown content type).
const CodeUndecodable = "undecodable"

// Consumer applies a Kafka topic to a store. See the package comment.
type Consumer struct {
	store *featurestore.Store
	opts  Options
	m     *metrics
	// mu guards the positions; the group callbacks, the source and the
	// readers of Progress share them.
	mu struct {
		sync.Mutex
		pos  map[int32]*position // committed positions of the partitions assigned (or seen)
		read map[int32]*position // where the records polled so far stop (ahead of pos while a batch is in flight)
		lag  map[int32]int64     // records behind the high watermark, per partition
		hw   map[int32]int64     // high watermark of each partition at its last fetch
	}
	onApply func(BatchInfo)
}

// Lag is how many records the consumer is behind the high watermarks of
// its partitions, as of the last fetch.
func (c *Consumer) Lag() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, l := range c.mu.lag {
		n += l
	}
	return n
}

// Progress is where the consumer stands, summed over the partitions it
// has held since it started.
type Progress struct {
	// Applied is the sum of the partitions' next offsets to apply; End
	// the sum of their high watermarks as of the last fetch (at least
	// Applied).
	Applied, End int64
	// Watermark is the oldest of the partitions' watermarks (newest event
	// time minus the allowed lateness; older records are late); 0 before
	// any partition applied an event.
	Watermark int64
	// Partitions is how many partitions the sums cover.
	Partitions int
}

// Progress returns the consumer's positions and watermark.
func (c *Consumer) Progress() Progress {
	c.mu.Lock()
	defer c.mu.Unlock()
	var p Progress
	first := true
	for part, pos := range c.mu.pos {
		p.Partitions++
		p.Applied += pos.next
		p.End += pos.next + c.mu.lag[part]
		if pos.maxTS != 0 {
			wm := pos.maxTS - c.opts.AllowedLateness.Milliseconds()
			if first || wm < p.Watermark {
				p.Watermark, first = wm, false
			}
		}
	}
	return p
}

// BatchInfo describes one applied batch (see OnApply).
type BatchInfo struct {
	Records   int             // records consumed (applied, duplicates and dead letters)
	Freshness []time.Duration // per applied record: commit time minus record timestamp
}

// New returns a Consumer of opts.Topic into store. Call Run.
func New(store *featurestore.Store, opts Options) (*Consumer, error) {
	if err := opts.ensureDefaults(); err != nil {
		return nil, err
	}
	c := &Consumer{store: store, opts: opts, m: newMetrics(opts.Registerer)}
	c.mu.pos = map[int32]*position{}
	c.mu.read = map[int32]*position{}
	c.mu.lag = map[int32]int64{}
	c.mu.hw = map[int32]int64{}
	return c, nil
}

// Positions returns the next offset of every partition of topic stored in
// store.
func Positions(store *featurestore.Store, topic string) (map[int32]int64, error) {
	ps, err := loadPositions(store, topic)
	if err != nil {
		return nil, err
	}
	out := make(map[int32]int64, len(ps))
	for p, pos := range ps {
		out[p] = pos.next
	}
	return out, nil
}

// SetPositions stores the next offset of the given partitions of topic (a
// rebuild from a time starts there); their watermarks start empty.
func SetPositions(store *featurestore.Store, topic string, next map[int32]int64) error {
	var extra featurestore.Extra
	for p, off := range next {
		extra.Meta = append(extra.Meta, featurestore.KV{Key: positionKey(topic, p), Value: position{next: off}.encode()})
	}
	_, err := store.ApplyWith(nil, extra)
	return err
}

func loadPositions(store *featurestore.Store, topic string) (map[int32]position, error) {
	prefix := positionPrefix(topic)
	meta, err := store.Meta(prefix)
	if err != nil {
		return nil, err
	}
	out := make(map[int32]position, len(meta))
	for k, v := range meta {
		p, ok := parsePositionKey(prefix, k)
		if !ok {
			continue // a topic whose name extends this one's
		}
		pos, err := decodePosition(k, v)
		if err != nil {
			return nil, err
		}
		out[p] = pos
	}
	return out, nil
}

// Run consumes until ctx is done (then it returns nil) or, with StopAt,
// until every listed partition is applied up to its offset. It returns
// the first error of the store or of producing dead letters. The records
// are applied by the updater's apply loop (updater.Apply), which polls the
// next batch while the current one applies.
func (c *Consumer) Run(ctx context.Context) error {
	if done, err := c.reachedStop(); err != nil || done {
		return err
	}
	src := &source{c: c, ctx: ctx}
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.opts.Brokers...),
		kgo.ConsumerGroup(c.opts.Group),
		kgo.ConsumeTopics(c.opts.Topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsCallbackBlocked(src.rebalanceWaiting),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
		kgo.AdjustFetchOffsetsFn(c.adjust),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(c.opts.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(c.opts.FetchMaxBytes),
		kgo.FetchMaxWait(100 * time.Millisecond),
		// The dead-letter producer.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.AllowAutoTopicCreation(),
		kgo.SessionTimeout(15 * time.Second),
	}
	if c.opts.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(c.opts.InstanceID))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	defer cl.Close()
	defer cl.AllowRebalance()
	src.cl = cl
	lo := updater.LoopOptions{Logger: c.opts.Logger, MaxBatch: c.opts.MaxBatch, ApplyDuration: c.m.apply, Freshness: c.m.freshness}
	if c.onApply != nil {
		lo.OnBatch = func(records int, fresh []time.Duration) { c.onApply(BatchInfo{Records: records, Freshness: fresh}) }
	}
	err = updater.Apply(ctx, c.store, src, lo)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// source is the topic as the apply loop's source. The loop polls the next
// records while the previous ones apply, so polled records are in flight
// between Next and Committed; a rebalance must not start while any are
// (BlockRebalanceOnPoll: a revoked partition's records are applied with
// its offset before the revocation, or not at all). When one is waiting,
// Next stops polling until every polled record is committed, then allows
// it.
type source struct {
	c   *Consumer
	cl  *kgo.Client
	ctx context.Context // Run's: producing dead letters is not cut short by the loop's waits

	mu struct {
		sync.Mutex
		inflight   int                // records returned by Next and not yet committed
		drained    chan struct{}      // closed and replaced when inflight drops to 0
		cancelPoll context.CancelFunc // ends the poll in progress, if any
		blocked    bool               // a rebalance waits for the polled records
	}
}

// rebalanceWaiting is kgo's signal that a rebalance waits for the records
// polled: stop polling (and end a poll that waits for records).
func (s *source) rebalanceWaiting(context.Context, *kgo.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.blocked = true
	if s.mu.cancelPoll != nil {
		s.mu.cancelPoll()
	}
}

// allowRebalance waits until every polled record is committed (or ctx is
// done: false) and lets a waiting rebalance run.
func (s *source) allowRebalance(ctx context.Context) bool {
	for {
		s.mu.Lock()
		if !s.mu.blocked {
			s.mu.Unlock()
			return true
		}
		if s.mu.inflight == 0 {
			s.mu.blocked = false
			s.mu.Unlock()
			s.cl.AllowRebalance()
			return true
		}
		if s.mu.drained == nil {
			s.mu.drained = make(chan struct{})
		}
		ch := s.mu.drained
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (s *source) Next(ctx context.Context, max int) (*updater.Batch, error) {
	c := s.c
	if done, err := c.reachedStop(); err != nil || done {
		if err != nil {
			return nil, err
		}
		return nil, updater.ErrSourceEnd
	}
	if !s.allowRebalance(ctx) {
		return nil, nil
	}
	pollCtx, cancel := context.WithCancel(ctx)
	if c.opts.StopAt != nil {
		// The stop may be reached through another consumer of the store
		// (or be reached already): look again every half second.
		pollCtx, cancel = context.WithTimeout(ctx, 500*time.Millisecond)
	}
	defer cancel()
	s.mu.Lock()
	s.mu.cancelPoll = cancel
	if s.mu.blocked {
		cancel()
	}
	s.mu.Unlock()
	fetches := s.cl.PollRecords(pollCtx, max)
	s.mu.Lock()
	s.mu.cancelPoll = nil
	s.mu.Unlock()
	if fetches.IsClientClosed() {
		return nil, updater.ErrSourceEnd
	}
	b, err := c.decodeFetches(s.ctx, s.cl, fetches)
	if err != nil || b == nil {
		return nil, err
	}
	s.mu.Lock()
	s.mu.inflight += b.Records
	s.mu.Unlock()
	return b, nil
}

// Committed moves the partitions' applied offsets (metrics, Progress, the
// group's commits for lag monitoring) to the batch's positions.
func (s *source) Committed(b *updater.Batch, res featurestore.ApplyResult) ([]time.Time, error) {
	c := s.c
	prefix := positionPrefix(c.opts.Topic)
	marks := map[int32]kgo.EpochOffset{}
	c.mu.Lock()
	for _, kv := range b.Meta {
		p, ok := parsePositionKey(prefix, kv.Key)
		if !ok {
			continue
		}
		pos, err := decodePosition(kv.Key, kv.Value)
		if err != nil {
			continue // written by decodeFetches: cannot happen
		}
		marks[p] = kgo.EpochOffset{Epoch: -1, Offset: pos.next}
		if ptr, ok := c.mu.pos[p]; ok {
			ptr.next, ptr.maxTS = pos.next, pos.maxTS
		}
		c.m.next.WithLabelValues(c.opts.Topic, strconv.Itoa(int(p))).Set(float64(pos.next))
	}
	for p, h := range c.mu.hw {
		if ptr, ok := c.mu.pos[p]; ok {
			c.m.lag.WithLabelValues(c.opts.Topic, strconv.Itoa(int(p))).Set(float64(max(h-ptr.next, 0)))
			c.mu.lag[p] = max(h-ptr.next, 0)
		}
	}
	c.mu.Unlock()
	s.cl.MarkCommitOffsets(map[string]map[int32]kgo.EpochOffset{c.opts.Topic: marks})
	c.m.records.WithLabelValues("applied").Add(float64(res.Applied))
	c.m.records.WithLabelValues("duplicate").Add(float64(res.Duplicates))
	s.mu.Lock()
	s.mu.inflight -= b.Records
	if s.mu.inflight == 0 && s.mu.drained != nil {
		close(s.mu.drained)
		s.mu.drained = nil
	}
	s.mu.Unlock()
	if done, err := c.reachedStop(); err != nil || done {
		if err != nil {
			return nil, err
		}
		return nil, updater.ErrSourceEnd
	}
	return nil, nil
}

// OnApply is called after every committed batch when set; tools measure
// with it. Set it before Run.
func (c *Consumer) OnApply(fn func(BatchInfo)) { c.onApply = fn }

// reachedStop reports whether every partition of StopAt is applied up to
// its offset.
func (c *Consumer) reachedStop() (bool, error) {
	if c.opts.StopAt == nil {
		return false, nil
	}
	ps, err := loadPositions(c.store, c.opts.Topic)
	if err != nil {
		return false, err
	}
	for p, stop := range c.opts.StopAt {
		if ps[p].next < stop {
			return false, nil
		}
	}
	return true, nil
}

// adjust replaces the offsets the group fetched (the broker's committed
// ones) by the positions stored with the state; a partition without one
// starts at its beginning.
func (c *Consumer) adjust(_ context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	stored, err := loadPositions(c.store, c.opts.Topic)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, parts := range offsets {
		if topic != c.opts.Topic {
			continue
		}
		for p := range parts {
			pos, ok := stored[p]
			if ok {
				parts[p] = kgo.NewOffset().At(pos.next).WithEpoch(-1)
			} else {
				parts[p] = kgo.NewOffset().AtStart()
			}
			read := pos
			c.mu.pos[p], c.mu.read[p] = &pos, &read
			c.m.next.WithLabelValues(topic, strconv.Itoa(int(p))).Set(float64(pos.next))
			c.opts.Logger.Info("kafka: partition assigned", "topic", topic, "partition", p, "resume_at", pos.next, "stored", ok)
		}
	}
	return offsets, nil
}

func (c *Consumer) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	// Every polled batch was applied before the rebalance could start
	// (BlockRebalanceOnPoll, and the source's wait for its records in
	// flight); commit their offsets to the group for lag monitoring, then
	// forget the partitions.
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		c.opts.Logger.Warn("kafka: commit offsets on revocation", "err", err)
	}
	c.forget(revoked)
}

func (c *Consumer) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) { c.forget(lost) }

func (c *Consumer) forget(parts map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range parts[c.opts.Topic] {
		delete(c.mu.pos, p)
		delete(c.mu.read, p)
		lbl := strconv.Itoa(int(p))
		c.m.lag.DeleteLabelValues(c.opts.Topic, lbl)
		delete(c.mu.lag, p)
		delete(c.mu.hw, p)
		c.m.next.DeleteLabelValues(c.opts.Topic, lbl)
		c.opts.Logger.Info("kafka: partition revoked", "topic", c.opts.Topic, "partition", p)
	}
}

// readPositionLocked returns the read position of partition p (where the
// records polled so far stop), reading it from the store if the partition
// was not assigned through adjust.
func (c *Consumer) readPositionLocked(p int32) (*position, error) {
	if pos, ok := c.mu.read[p]; ok {
		return pos, nil
	}
	stored, err := loadPositions(c.store, c.opts.Topic)
	if err != nil {
		return nil, err
	}
	pos, read := stored[p], stored[p]
	if _, ok := c.mu.pos[p]; !ok {
		c.mu.pos[p] = &pos
	}
	c.mu.read[p] = &read
	return &read, nil
}

// decodeFetches turns one poll into a batch for the apply loop: every
// partition's records decoded and watermark-checked, its new position, and
// the dead letters, which reach the dead-letter topic before the batch is
// returned (so before the positions past them commit: at least once; a
// crash in between produces them again). nil when the poll had no records
// to apply.
func (c *Consumer) decodeFetches(ctx context.Context, cl *kgo.Client, fetches kgo.Fetches) (*updater.Batch, error) {
	start := time.Now()
	now := c.opts.Now()
	var (
		b        = &updater.Batch{}
		dlq      []*kgo.Record
		seek     map[string]map[int32]kgo.EpochOffset
		dlqCount = map[string]int{}
	)
	c.mu.Lock()
	var perr error
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if fp.Err != nil {
			if !errors.Is(fp.Err, context.Canceled) && !errors.Is(fp.Err, context.DeadlineExceeded) {
				c.m.fetchError.Inc()
				c.opts.Logger.Warn("kafka: fetch", "topic", fp.Topic, "partition", fp.Partition, "err", fp.Err)
			}
			return
		}
		if fp.Topic != c.opts.Topic || perr != nil || len(fp.Records) == 0 {
			return
		}
		ptr, err := c.readPositionLocked(fp.Partition)
		if err != nil {
			perr = err
			return
		}
		pos := *ptr
		advanced := false
		for _, r := range fp.Records {
			if r.Offset < pos.next {
				c.m.skipped.WithLabelValues("already_applied").Inc()
				continue
			}
			if r.Offset > pos.next {
				if !pos.seeked {
					// The fetch did not start where the state stops: go back
					// rather than skip. Only a second gap is taken as real.
					pos.seeked = true
					if seek == nil {
						seek = map[string]map[int32]kgo.EpochOffset{c.opts.Topic: {}}
					}
					seek[c.opts.Topic][fp.Partition] = kgo.EpochOffset{Epoch: -1, Offset: pos.next}
					c.opts.Logger.Warn("kafka: fetch started past the stored offset; seeking back", "partition", fp.Partition, "stored", pos.next, "fetched", r.Offset)
					break
				}
				c.opts.Logger.Warn("kafka: offsets missing from the partition (deleted by retention?); skipping them", "partition", fp.Partition, "from", pos.next, "to", r.Offset)
				c.m.skipped.WithLabelValues("gap").Add(float64(r.Offset - pos.next))
			}
			pos.seeked = false
			b.Records++
			advanced = true
			pos.next = r.Offset + 1
			d, code, ferr := c.decode(r, &pos, now)
			if ferr != nil {
				dlqCount[code]++
				dlq = append(dlq, deadRecord(c.opts.DLQTopic, r, code, ferr.Error()))
				b.Dead = append(b.Dead, featurestore.DeadLetter{
					Received: r.Timestamp.UnixMilli(),
					Seq:      1<<63 | uint64(fp.Partition)<<40 | uint64(r.Offset),
					Record:   deadLetter(d, code, fmt.Sprintf("%s (topic %s, partition %d, offset %d)", ferr.Error(), r.Topic, r.Partition, r.Offset), r.Timestamp),
				})
				continue
			}
			b.Entries = append(b.Entries, featurestore.Entry{Offset: uint64(r.Offset), Event: d.norm})
			b.Since = append(b.Since, r.Timestamp)
		}
		*ptr = pos
		if advanced {
			b.Meta = append(b.Meta, featurestore.KV{Key: positionKey(c.opts.Topic, fp.Partition), Value: pos.encode()})
		}
		c.mu.hw[fp.Partition] = fp.HighWatermark
	})
	c.mu.Unlock()
	if perr != nil {
		return nil, fmt.Errorf("kafka consumer: %w", perr)
	}
	if seek != nil {
		cl.SetOffsets(seek)
	}
	if b.Records == 0 {
		return nil, nil
	}
	if len(dlq) > 0 {
		if err := cl.ProduceSync(ctx, dlq...).FirstErr(); err != nil {
			return nil, fmt.Errorf("kafka consumer: produce dead letters to %s: %w", c.opts.DLQTopic, err)
		}
	}
	for code, n := range dlqCount {
		c.m.dead.WithLabelValues(code).Add(float64(n))
		c.m.records.WithLabelValues("dead_letter").Add(float64(n))
	}
	b.Took = time.Since(start)
	return b, nil
}

type decoded struct {
	norm featurestore.Event
	ev   *recsysv1.Event
}

// decode reads, validates and watermark-checks one record, advancing the
// partition's newest event time. On failure it returns the decoded event
// (nil if undecodable), the dead-letter code and the error.
func (c *Consumer) decode(r *kgo.Record, pos *position, now time.Time) (decoded, string, error) {
	ct := c.opts.ContentType
	for _, h := range r.Headers {
		if h.Key == HeaderContentType {
			if string(h.Value) == ContentDeadLetter {
				ct = ContentDeadLetter
				continue
			}
			var ok bool
			if ct, ok = normalizeContentType(string(h.Value)); !ok {
				return decoded{}, CodeUndecodable, fmt.Errorf("header %s: unknown content type %q", HeaderContentType, h.Value)
			}
		}
	}
	if ct == ContentDeadLetter {
		// An event that ingest refused, published beside the events
		// (Producer.PublishDeadLetters): kept here like the topic's own bad
		// records, exactly once.
		var dl recsysv1.DeadLetter
		if err := proto.Unmarshal(r.Value, &dl); err != nil {
			return decoded{}, CodeUndecodable, fmt.Errorf("value: not a protobuf recsys.v1.DeadLetter: %v", err)
		}
		if dl.Code != updater.CodeFuture && dl.Code != updater.CodeLate {
			return decoded{}, CodeUndecodable, fmt.Errorf("value: a dead letter of ingest with code %.40q, neither %s nor %s", dl.Code, updater.CodeFuture, updater.CodeLate)
		}
		reason := dl.Reason
		if strings.TrimSpace(reason) == "" {
			reason = dl.Code
		}
		return decoded{ev: dl.Event}, dl.Code, fmt.Errorf("refused at ingest: %s", reason)
	}
	var ev *recsysv1.Event
	if ct == ContentProtobuf {
		ev = new(recsysv1.Event)
		if err := proto.Unmarshal(r.Value, ev); err != nil {
			return decoded{}, CodeUndecodable, fmt.Errorf("value: not a protobuf recsys.v1.Event: %v", err)
		}
	} else {
		var ferr *updater.FieldError
		if ev, ferr = updater.DecodeJSONEvent(r.Value); ferr != nil {
			return decoded{}, CodeUndecodable, fmt.Errorf("value: %w", ferr)
		}
	}
	norm, ferr := updater.Normalize(ev, now, c.opts.MaxFutureSkew)
	if ferr != nil {
		return decoded{ev: ev}, ferr.Code, ferr
	}
	if wm, late := updater.Late(norm.TS, pos.maxTS, c.opts.AllowedLateness); late {
		return decoded{ev: ev}, updater.CodeLate, fmt.Errorf("ts: %s is older than the partition's watermark %s (its newest event time minus the allowed lateness %s)",
			fmtTS(norm.TS), fmtTS(wm), c.opts.AllowedLateness)
	}
	pos.maxTS = max(pos.maxTS, norm.TS)
	return decoded{norm: norm, ev: ev}, "", nil
}

func fmtTS(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }

// deadRecord is the dead-letter topic's copy of r: same key, value and
// headers, plus the reason and the source position.
func deadRecord(topic string, r *kgo.Record, code, msg string) *kgo.Record {
	h := append([]kgo.RecordHeader(nil), r.Headers...)
	h = append(h,
		kgo.RecordHeader{Key: HeaderReason, Value: []byte(code)},
		kgo.RecordHeader{Key: HeaderError, Value: []byte(msg)},
		kgo.RecordHeader{Key: HeaderSourceTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: HeaderSourcePartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: HeaderSourceOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
	)
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: h, Timestamp: r.Timestamp}
}

// deadLetter is the store's copy: the proto DeadLetter, received at the
// record's timestamp (so a re-read record writes the same bytes).
func deadLetter(d decoded, code, reason string, ts time.Time) []byte {
	b, _ := proto.Marshal(&recsysv1.DeadLetter{Event: d.ev, Code: code, Reason: reason, ReceivedAt: timestamppb.New(ts)})
	return b
}
