// Package eventlog is the embedded durable event log used when no Kafka
// broker is configured: an append-only sequence of records numbered by
// offset, kept in its own Pebble instance.
//
// Append returns only after the records are synced to disk, so a record that
// was acknowledged survives a crash (kill -9 or power loss). Concurrent
// appends are group-committed: one writer goroutine gathers every pending
// append into one batch and one fsync. Offsets are dense, start at 0 and are
// published in order, so a reader that sees End() == n can read every
// record below n.
//
// TruncateBefore deletes a prefix of the log (the updater does once it
// has applied the records and they are past the store's retention), so the
// log stays bounded under an endless stream.
package eventlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/streamrec/recsys/featurestore"
)

// ErrClosed is returned by operations on a closed Log.
var ErrClosed = errors.New("eventlog: closed")

// Options configures a Log.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	FS     vfs.FS       // default vfs.Default; tests use vfs.NewMem()
	// MaxGroupBytes bounds the bytes one group commit gathers. Default 16 MiB.
	MaxGroupBytes int
}

func (o *Options) ensureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.MaxGroupBytes <= 0 {
		o.MaxGroupBytes = 16 << 20
	}
}

var keyPrefix = []byte("l/")

func key(off uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), keyPrefix...), off)
}

type appendReq struct {
	recs  [][]byte
	mark  int64
	first uint64
	err   error
	done  chan struct{}
}

// Log is an embedded durable log.
type Log struct {
	db   *pebble.DB
	plog *featurestore.PebbleLog // Failed after a fatal write error
	opts Options
	reqs chan *appendReq
	quit chan struct{}
	wg   sync.WaitGroup

	// readers holds Read calls in flight; Close takes it exclusively
	// before closing the database.
	readers sync.RWMutex

	mu struct {
		sync.Mutex
		end     uint64        // one past the last durable record
		mark    int64         // the largest durable mark (see Enqueue)
		changed chan struct{} // closed and replaced when end moves
		closed  bool
	}
}

// Open opens or creates the log in dir.
func Open(dir string, opts Options) (*Log, error) {
	opts.ensureDefaults()
	plog := featurestore.NewPebbleLog(opts.Logger.With("component", "eventlog"))
	db, err := pebble.Open(dir, &pebble.Options{
		FS:                 opts.FS,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             plog,
	})
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", dir, err)
	}
	l := &Log{db: db, plog: plog, opts: opts, reqs: make(chan *appendReq, 1024), quit: make(chan struct{})}
	l.mu.changed = make(chan struct{})
	iter, err := db.NewIter(&pebble.IterOptions{LowerBound: keyPrefix, UpperBound: []byte("l0")})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open log %s: %w", dir, err)
	}
	if iter.Last() {
		l.mu.end = binary.BigEndian.Uint64(iter.Key()[len(keyPrefix):]) + 1
	}
	if err := errors.Join(iter.Error(), iter.Close()); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open log %s: %w", dir, err)
	}
	if v, closer, err := db.Get([]byte(markKey)); err == nil {
		if len(v) == 8 {
			l.mu.mark = int64(binary.BigEndian.Uint64(v))
		}
		_ = closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		_ = db.Close()
		return nil, fmt.Errorf("open log %s: %w", dir, err)
	}
	l.wg.Add(1)
	go l.writer()
	return l, nil
}

// End returns the offset one past the last durable record.
func (l *Log) End() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.end
}

// Append makes recs durable and returns the offset of the first. It blocks
// until the records are synced or ctx is done; in the latter case the
// records may or may not have been appended.
func (l *Log) Append(ctx context.Context, recs [][]byte) (uint64, error) {
	if len(recs) == 0 {
		return l.End(), nil
	}
	p, err := l.Enqueue(ctx, recs, 0)
	if err != nil {
		return 0, err
	}
	return p.Wait(ctx)
}

// Pending is an append handed to the writer; Wait for it to be durable.
type Pending struct {
	l   *Log
	req *appendReq
}

// Enqueue hands recs (at least one) to the writer and returns without
// waiting for them to be synced: appends get their offsets in the order
// they were enqueued, so a caller that enqueues under its own lock has the
// log in that lock's order. mark is an opaque value durable with the
// records (the updater's newest accepted event time); Mark returns the
// largest one. If Enqueue fails, nothing was appended.
func (l *Log) Enqueue(ctx context.Context, recs [][]byte, mark int64) (*Pending, error) {
	req := &appendReq{recs: recs, mark: mark, done: make(chan struct{})}
	select {
	case l.reqs <- req:
		return &Pending{l, req}, nil
	case <-l.quit:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Wait blocks until the records are synced or ctx is done (then they may
// or may not have been appended) and returns the offset of the first.
func (p *Pending) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-p.req.done:
		return p.req.first, p.req.err
	case <-p.l.quit:
		// The records may have been committed; a caller that retries is
		// safe because events are deduplicated by id downstream.
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Mark returns the largest mark of the durable appends (0 without any).
func (l *Log) Mark() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.mark
}

// writer is the single goroutine that assigns offsets and commits groups.
func (l *Log) writer() {
	defer l.wg.Done()
	for {
		var group []*appendReq
		select {
		case req := <-l.reqs:
			group = append(group, req)
		case <-l.quit:
			return
		}
		size := groupBytes(group[0])
	gather:
		for size < l.opts.MaxGroupBytes {
			select {
			case req := <-l.reqs:
				group = append(group, req)
				size += groupBytes(req)
			default:
				break gather
			}
		}
		l.commit(group)
	}
}

func groupBytes(r *appendReq) int {
	n := 0
	for _, rec := range r.recs {
		n += len(rec)
	}
	return n
}

func (l *Log) commit(group []*appendReq) {
	end, mark := l.End(), l.Mark()
	next, newMark := end, mark
	b := l.db.NewBatch()
	var err error
	for _, req := range group {
		newMark = max(newMark, req.mark)
		req.first = next
		for _, rec := range req.recs {
			if err = b.Set(key(next), rec, nil); err != nil {
				break
			}
			next++
		}
	}
	if err == nil && newMark > mark {
		err = b.Set([]byte(markKey), binary.BigEndian.AppendUint64(nil, uint64(newMark)), nil)
	}
	if err == nil {
		// A failed write or sync is an error for every request of the
		// group, never an acknowledgement (nor a panic): Pebble cannot tell
		// what reached the disk, so the log refuses appends from then on.
		err = l.plog.Guard(func() error { return b.Commit(pebble.Sync) })
	}
	_ = b.Close()
	if err != nil {
		err = fmt.Errorf("append: %w", err)
		l.opts.Logger.Error("event log append failed", "err", err)
	} else {
		l.mu.Lock()
		l.mu.end, l.mu.mark = next, newMark
		close(l.mu.changed)
		l.mu.changed = make(chan struct{})
		l.mu.Unlock()
	}
	for _, req := range group {
		req.err = err
		close(req.done)
	}
}

// Wait blocks until End() > off, ctx is done or the log is closed.
func (l *Log) Wait(ctx context.Context, off uint64) error {
	for {
		l.mu.Lock()
		end, ch, closed := l.mu.end, l.mu.changed, l.mu.closed
		l.mu.Unlock()
		if end > off {
			return nil
		}
		if closed {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-l.quit:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// enter registers an operation on the database (Close waits for it to
// call done) and returns the log end as of then; ErrClosed once Close has
// begun.
func (l *Log) enter() (end uint64, done func(), err error) {
	l.readers.RLock()
	l.mu.Lock()
	end, closed := l.mu.end, l.mu.closed
	l.mu.Unlock()
	if closed {
		l.readers.RUnlock()
		return 0, nil, ErrClosed
	}
	return end, l.readers.RUnlock, nil
}

// Read calls fn for the records at offsets [from, min(End(), from+max)) in
// order and returns the offset after the last one read. The slice passed to
// fn is valid only during the call.
func (l *Log) Read(from uint64, max int, fn func(off uint64, rec []byte) error) (uint64, error) {
	end, done, err := l.enter()
	if err != nil {
		return from, err
	}
	defer done()
	if from >= end {
		return from, nil
	}
	if uint64(max) < end-from {
		end = from + uint64(max)
	}
	iter, err := l.db.NewIter(&pebble.IterOptions{LowerBound: key(from), UpperBound: key(end)})
	if err != nil {
		return from, err
	}
	next := from
	for iter.First(); iter.Valid(); iter.Next() {
		off := binary.BigEndian.Uint64(iter.Key()[len(keyPrefix):])
		if off != next && next != from {
			err = fmt.Errorf("read: offset %d missing (found %d)", next, off)
			break
		}
		next = off // a reader that starts below a truncated prefix skips it
		v, verr := iter.ValueAndErr()
		if verr != nil {
			err = verr
			break
		}
		if err = fn(off, v); err != nil {
			break
		}
		next++
	}
	return next, errors.Join(err, iter.Error(), iter.Close())
}

// TruncateBefore deletes the records below off, except the last record of
// the log. Reading them afterwards finds nothing; offsets of later records
// do not change.
func (l *Log) TruncateBefore(off uint64) error {
	end, done, err := l.enter()
	if err != nil {
		return err
	}
	defer done()
	// The last record always stays: Open finds the end of the log from it.
	if end == 0 {
		return nil
	}
	off = min(off, end-1)
	if err := l.plog.Guard(func() error { return l.db.DeleteRange(key(0), key(off), pebble.NoSync) }); err != nil {
		return fmt.Errorf("truncate log: %w", err)
	}
	return nil
}

// metaPrefix keys the log's own small values (not records): they sort
// after every "l/" record key.
const metaPrefix = "m/"

// markKey holds the largest mark of the appends (8 bytes BE), written in
// their batch.
const markKey = metaPrefix + "mark"

// PutMeta durably stores value under name, beside the records.
func (l *Log) PutMeta(name string, value []byte) error {
	_, done, err := l.enter()
	if err != nil {
		return err
	}
	defer done()
	if err := l.plog.Guard(func() error { return l.db.Set([]byte(metaPrefix+name), value, pebble.Sync) }); err != nil {
		return fmt.Errorf("log meta %s: %w", name, err)
	}
	return nil
}

// Meta returns the value stored under name, if any.
func (l *Log) Meta(name string) ([]byte, bool, error) {
	_, done, err := l.enter()
	if err != nil {
		return nil, false, err
	}
	defer done()
	v, closer, err := l.db.Get([]byte(metaPrefix + name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("log meta %s: %w", name, err)
	}
	out := append([]byte(nil), v...)
	return out, true, closer.Close()
}

// Failed is featurestore.ErrStorage once a write of the log failed
// (appends are refused from then on); nil while the log is healthy.
func (l *Log) Failed() error { return l.plog.Failed() }

// Checkpoint writes a consistent copy of the log to dir (which must not
// exist).
func (l *Log) Checkpoint(dir string) error {
	_, done, err := l.enter()
	if err != nil {
		return err
	}
	defer done()
	if err := l.plog.Guard(func() error { return l.db.Checkpoint(dir, pebble.WithFlushedWAL()) }); err != nil {
		_ = l.opts.FS.RemoveAll(dir) // no half-written checkpoint
		return fmt.Errorf("checkpoint log: %w", err)
	}
	return nil
}

// Close stops the writer and closes the log; pending appends fail with
// ErrClosed. It is safe to call twice.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.mu.closed {
		l.mu.Unlock()
		return nil
	}
	l.mu.closed = true
	l.mu.Unlock()
	close(l.quit)
	l.wg.Wait()
	// Fail requests that were queued but never gathered.
	for {
		select {
		case req := <-l.reqs:
			req.err = ErrClosed
			close(req.done)
		default:
			l.readers.Lock()
			defer l.readers.Unlock()
			return l.db.Close()
		}
	}
}
