package serving

import (
	"container/list"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
)

// Ordered ingest. A client that retries a batch it got no answer for (a
// timeout) cannot know whether the first attempt is still on its way: if
// it moves on and the stale attempt arrives after newer batches, the
// newer events have moved the watermark and the stale events are late.
// So a client may name its stream and number its batches (headers
// Recsys-Stream and Recsys-Seq, as `recsys replay` does): the server
// applies batch n of a stream only right after batch n-1, answers a
// repeated batch n with the answer it gave (without ingesting it again),
// and refuses a stale or out-of-order batch with 409. Attempts of one
// batch that arrive together wait for each other.

const (
	headerStream = "Recsys-Stream"
	headerSeq    = "Recsys-Seq"
	// maxStreams bounds the streams remembered; the least recently used
	// is forgotten (its next batch starts it anew).
	maxStreams = 4096
)

type orderedStream struct {
	mu   sync.Mutex // held while a batch of the stream is ingested
	id   string
	seq  uint64 // last acknowledged batch; 0 before the first
	resp *recsysv1.IngestResponse
	err  error
	elem *list.Element
}

type orderedStreams struct {
	mu  sync.Mutex
	m   map[string]*orderedStream
	lru *list.List // front: most recently used
}

func newOrderedStreams() *orderedStreams {
	return &orderedStreams{m: make(map[string]*orderedStream), lru: list.New()}
}

func (o *orderedStreams) get(id string) *orderedStream {
	o.mu.Lock()
	defer o.mu.Unlock()
	if st, ok := o.m[id]; ok {
		o.lru.MoveToFront(st.elem)
		return st
	}
	st := &orderedStream{id: id}
	st.elem = o.lru.PushFront(st)
	o.m[id] = st
	for len(o.m) > maxStreams {
		old := o.lru.Remove(o.lru.Back()).(*orderedStream)
		delete(o.m, old.id)
	}
	return st
}

// streamHeaders returns the stream and sequence number of r, if it names
// them (ok false without a stream).
func streamHeaders(r *http.Request) (id string, seq uint64, ok bool, err error) {
	id = r.Header.Get(headerStream)
	if id == "" {
		return "", 0, false, nil
	}
	if len(id) > 128 {
		return "", 0, false, invalidArg("Recsys-Stream", "longer than 128 bytes")
	}
	seq, perr := strconv.ParseUint(r.Header.Get(headerSeq), 10, 64)
	if perr != nil || seq == 0 {
		return "", 0, false, invalidArg("Recsys-Seq", "%q is not a batch number (1, 2, ...) of stream %s", r.Header.Get(headerSeq), id)
	}
	return id, seq, true, nil
}

// errOutOfOrder is the status of a stale or early batch: ABORTED, 409 on
// REST.
func errOutOfOrder(format string, args ...any) error {
	return status.Error(codes.Aborted, fmt.Sprintf(format, args...))
}

// ingestOrdered runs ingest for batch seq of stream id in order.
func (s *Server) ingestOrdered(ctx context.Context, id string, seq uint64, ingest func() (*recsysv1.IngestResponse, error)) (*recsysv1.IngestResponse, error) {
	st := s.streams.get(id)
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.seq == 0 || seq == st.seq+1:
	case seq == st.seq:
		return st.resp, st.err // a retry of the batch answered last
	case seq < st.seq:
		return nil, errOutOfOrder("Recsys-Seq: batch %d of stream %s is stale: batch %d was acknowledged after it", seq, id, st.seq)
	default:
		return nil, errOutOfOrder("Recsys-Seq: batch %d of stream %s is early: batch %d comes first", seq, id, st.seq+1)
	}
	if err := ctx.Err(); err != nil {
		return nil, toStatus(err)
	}
	resp, err := ingest()
	if err != nil && status.Code(err) != codes.InvalidArgument {
		// Not acknowledged (unavailable, disk full, ...): the client sends
		// the same batch again.
		return nil, err
	}
	st.seq, st.resp, st.err = seq, resp, err
	return resp, err
}
