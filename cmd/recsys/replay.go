package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/datadir"
	"github.com/streamrec/recsys/updater/eventfile"
)

type replayOpts struct {
	format     string
	target     string
	dataDir    string
	batch      int
	retryFor   time.Duration
	progress   string
	log        logConfig
	store      storeConfig
	lateness   time.Duration
	maxSkew    time.Duration
	timeout    time.Duration
	allowRej   bool
	token      string
	sort       bool
	wait       bool
	httpClient *http.Client
}

func replayCmd() *cobra.Command {
	var o replayOpts
	cmd := &cobra.Command{
		Use:   "replay --format taobao|jsonl (--target URL | --data.dir DIR) FILE...",
		Short: "Stream event files (plain or .gz) into a running server or a data dir",
		Long: `replay streams event files (plain or gzip) into a running server (--target)
or straight into a data dir (--data.dir), one numbered batch at a time, and
prints how many events were accepted and why the others were rejected. It
exits 1 when any event was rejected (--allow-rejected to accept that), and at
once when the target cannot be reached or is not a recsys server. With
--target it waits until the server has applied what it acknowledged, so that
reads right after it see every event (--wait=false not to).

Files grouped by user rather than by time (such as the Taobao samples) need
--sort: their events would otherwise arrive behind the watermark as late.`,
		Example: `  recsys replay --target http://localhost:8080 --format jsonl events.jsonl
  recsys replay --target http://localhost:8080 --sort ../shared/data/taobao/UserBehavior-users-84k.csv.gz
  recsys replay --data.dir ./data --clock event --sort old-events.csv.gz`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			switch {
			case o.format != "taobao" && o.format != "jsonl":
				return usageError{fmt.Errorf("format: %q is neither taobao nor jsonl", o.format)}
			case (o.target == "") == (o.dataDir == ""):
				return usageError{fmt.Errorf("give exactly one of --target and --data.dir")}
			case o.batch <= 0:
				return usageError{fmt.Errorf("batch: %d is not positive", o.batch)}
			case checkProgress(o.progress) != nil:
				return usageError{checkProgress(o.progress)}
			case o.timeout <= 0:
				return usageError{fmt.Errorf("timeout: %s is not positive", o.timeout)}
			}
			if o.target != "" {
				if err := checkTarget(o.target); err != nil {
					return usageError{err}
				}
			}
			if err := o.log.validate(); err != nil {
				return usageError{err}
			}
			return replay(cmd.Context(), &o, files)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "taobao", "input format: taobao (CSV user,item,category,behavior,unix_seconds) or jsonl")
	f.StringVar(&o.target, "target", "", "base URL of a running server, such as http://localhost:8080")
	f.StringVar(&o.dataDir, "data.dir", "", "data dir to ingest into directly (no server may be running on it)")
	f.IntVar(&o.batch, "batch", 5_000, "events per request or ingest batch")
	f.DurationVar(&o.retryFor, "retry-for", 5*time.Minute, "how long to keep retrying a batch the server did not acknowledge")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "with --target: how long to wait for the answer to one request before sending the batch again")
	f.BoolVar(&o.allowRej, "allow-rejected", false, "exit 0 even when events were rejected (invalid, late, future); by default a run that loses events exits 1")
	bindProgress(f, &o.progress)
	f.StringVar(&o.token, "token", os.Getenv("RECSYS_TOKEN"), "with --target: bearer token with the write scope (default $RECSYS_TOKEN)")
	f.BoolVar(&o.sort, "sort", false, "read every file first and send the events in event-time order (holds them in memory, about 150 bytes each)")
	f.BoolVar(&o.wait, "wait", true, "with --target: after the last batch, wait until the server has applied every event it acknowledged")
	f.DurationVar(&o.maxSkew, "ingest.max-future-skew", 5*time.Minute, "reject events this far past the wall clock")
	o.log.bindFlags(f)
	o.store.bindFlags(f)
	f.DurationVar(&o.lateness, "ingest.allowed-lateness", time.Hour, "with --data.dir: events older than the newest event time minus this are rejected as late")
	return cmd
}

// replayStats counts what a replay did.
type replayStats struct {
	read      int64
	accepted  int64
	rejected  map[string]int64 // by field/code
	estimated int64            // rejections counted by the sample of reasons of their batch
}

func (s *replayStats) reject(field, code string, n int64) {
	s.rejected[field+"/"+code] += n
}

func (s *replayStats) rejectedTotal() int64 {
	var n int64
	for _, v := range s.rejected {
		n += v
	}
	return n
}

// sink takes batches of valid events.
type sink interface {
	send(ctx context.Context, evs []*recsysv1.Event, st *replayStats) error
	close(ctx context.Context) error
}

func replay(ctx context.Context, o *replayOpts, files []string) error {
	logger := o.log.logger()
	regular := true // all files can be read twice: counted, then sent
	for _, f := range files {
		if f == "-" {
			regular = false
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		regular = regular && fi.Mode().IsRegular()
	}
	var snk sink
	if o.target != "" {
		h := &httpSink{base: strings.TrimRight(o.target, "/"), retryFor: o.retryFor, client: &http.Client{Timeout: o.timeout},
			logger: logger, stream: newStreamID(), token: o.token}
		if err := h.probe(ctx); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		snk = h
	} else {
		eng, err := openDataDir(o.dataDir, o.store, ingestConfig{lateness: o.lateness, futureSkew: o.maxSkew, minFree: 64 << 20}, logger, nil, nil)
		if err != nil {
			return err
		}
		snk = newDirSink(ctx, eng)
	}

	var total int64 = -1
	if o.progress != "off" && regular {
		var err error
		if total, err = eventfile.Count(files); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
	}
	bar := newProgress(o.progress, "replay", "events", total)
	st := &replayStats{rejected: map[string]int64{}}
	start := time.Now()
	batch := make([]*recsysv1.Event, 0, o.batch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := snk.send(ctx, batch, st)
		batch = batch[:0]
		bar.Set(st.read, 0)
		return err
	}
	runErr := func() error {
		err := eventfile.ReadAll(files, o.format, o.sort, func(ev *recsysv1.Event, ferr *updater.FieldError) error {
			st.read++
			if ferr == nil {
				// Validate here with the server's own rules so that the summary
				// can count every rejection by reason.
				_, ferr = updater.Normalize(ev, time.Now(), o.maxSkew)
			}
			if ferr != nil {
				st.reject(ferr.Field, ferr.Code, 1)
				return nil
			}
			batch = append(batch, ev)
			if len(batch) == o.batch {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		return flush()
	}()
	bar.Finish()
	if h, ok := snk.(*httpSink); ok && runErr == nil && o.wait {
		runErr = h.waitApplied(ctx, o.progress)
	}
	closeErr := snk.close(ctx)
	el := time.Since(start)
	fmt.Printf("replay: %d events read, %d accepted, %d rejected in %s (%.0f events/s)\n",
		st.read, st.accepted, st.rejectedTotal(), el.Round(time.Millisecond), float64(st.read)/max(el.Seconds(), 1e-9))
	if len(st.rejected) > 0 {
		fmt.Println("rejected by reason (field/code):")
		keys := make([]string, 0, len(st.rejected))
		for k := range st.rejected {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Printf("  %-28s %d\n", k, st.rejected[k])
		}
		if st.rejected["ts/late"] > 0 && !o.sort {
			fmt.Println("  (late: older than the server's watermark; a file not in event-time order, such as one grouped by user, needs --sort)")
		}
		if st.estimated > 0 {
			fmt.Printf("  (%d of them counted from the first reasons the server gave for their batch)\n", st.estimated)
		}
	}
	if runErr != nil {
		return fmt.Errorf("replay: %w", runErr)
	}
	if closeErr != nil {
		return closeErr
	}
	if n := st.rejectedTotal(); n > 0 && !o.allowRej {
		return fmt.Errorf("replay: %d of %d events were rejected and are not in the store (reasons above); --allow-rejected to exit 0 anyway", n, st.read)
	}
	return nil
}

// httpSink posts batches to a server's /v1/events, retrying a batch until
// the server acknowledges it: the server deduplicates by event id, so a
// batch that was applied but not acknowledged is harmless to resend.
//
// Batches go one at a time, in file order, each numbered within the run's
// stream (headers Recsys-Stream, Recsys-Seq): a retry after a timeout is
// the same batch number, so the server answers it once, and an attempt
// that arrives late (after newer batches) is refused instead of being
// ingested behind them, where its events would be late.
type httpSink struct {
	base     string // the server's base URL
	token    string
	retryFor time.Duration
	client   *http.Client
	logger   *slog.Logger
	stream   string
	seq      uint64
}

// newStreamID names a replay run's stream of batches.
func newStreamID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "replay-" + hex.EncodeToString(b[:])
}

type jsonEvent struct {
	EventID    string `json:"event_id,omitempty"`
	UserID     string `json:"user_id"`
	ItemID     string `json:"item_id"`
	CategoryID string `json:"category_id,omitempty"`
	Behavior   string `json:"behavior"`
	TS         int64  `json:"ts"`
}

func (h *httpSink) send(ctx context.Context, evs []*recsysv1.Event, st *replayStats) error {
	req := struct {
		Events []jsonEvent `json:"events"`
	}{Events: make([]jsonEvent, len(evs))}
	for i, ev := range evs {
		req.Events[i] = jsonEvent{ev.EventId, ev.UserId, ev.ItemId, ev.CategoryId, ev.Behavior, ev.Ts}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	h.seq++
	deadline := time.Now().Add(h.retryFor)
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		resp, err := h.post(ctx, body, h.seq)
		if err == nil && resp.status == http.StatusOK {
			st.accepted += resp.Accepted
			for _, r := range resp.Rejected {
				st.reject(r.Field, r.Code, 1)
			}
			return nil
		}
		if err == nil && resp.status == http.StatusBadRequest {
			// Every event of the batch was rejected by the server: count
			// them by the reasons it gave (for at most its first 100; the
			// rest in the same proportions).
			sample := map[string]int64{}
			var n int64
			for _, d := range resp.Details {
				for _, v := range d.FieldViolations {
					if n < int64(len(evs)) {
						// events[i].ts -> ts
						sample[v.Field[strings.LastIndexByte(v.Field, '.')+1:]+"/"+v.Reason]++
						n++
					}
				}
			}
			rest := int64(len(evs)) - n
			if n == 0 {
				st.reject("batch", "invalid_argument", rest)
				h.logger.Warn("server rejected a whole batch", "events", len(evs), "message", resp.Message)
				return nil
			}
			keys := slices.Sorted(maps.Keys(sample))
			var given int64
			for i, k := range keys {
				extra := rest * sample[k] / n
				if i == len(keys)-1 {
					extra = rest - given
				}
				given += extra
				st.rejected[k] += sample[k] + extra
			}
			st.estimated += rest
			return nil
		}
		if err == nil && permanent(resp.status) {
			return fmt.Errorf("%s answers HTTP %d: %s", h.base+"/v1/events", resp.status, resp.Message)
		}
		if err == nil && resp.status == http.StatusConflict {
			return fmt.Errorf("batch %d: the server refused it as out of order: %s", h.seq, resp.Message)
		}
		if err == nil {
			err = fmt.Errorf("HTTP %d: %s", resp.status, resp.Message)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("batch not acknowledged after %d attempts over %s: %w", attempt, h.retryFor, err)
		}
		h.logger.Warn("batch not acknowledged, retrying", "attempt", attempt, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

type ingestReply struct {
	status   int
	Accepted int64 `json:"accepted"`
	Rejected []struct {
		Field string `json:"field"`
		Code  string `json:"code"`
	} `json:"rejected"`
	Message string `json:"message"`
	Details []struct {
		FieldViolations []fieldViolation `json:"field_violations"`
	} `json:"details"`
}

type fieldViolation struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (h *httpSink) post(ctx context.Context, body []byte, seq uint64) (*ingestReply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/v1/events", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	req.Header.Set("Recsys-Stream", h.stream)
	req.Header.Set("Recsys-Seq", strconv.FormatUint(seq, 10))
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	r := &ingestReply{status: resp.StatusCode}
	if err := json.Unmarshal(b, r); err != nil {
		r.Message = strings.TrimSpace(string(b))
		if resp.StatusCode == http.StatusOK {
			return nil, fmt.Errorf("decode reply: %w", err)
		}
	}
	return r, nil
}

func (h *httpSink) close(context.Context) error { return nil }

// permanent reports whether an HTTP status means that sending the batch
// again cannot help (a wrong URL, a missing token, a refused body).
func permanent(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}

// checkTarget refuses a --target that is not an http(s) URL.
func checkTarget(target string) error {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("target: %q is not an http:// or https:// URL such as http://localhost:8080", target)
	}
	return nil
}

// probe checks, within 10 s, that the target is a recsys server that
// answers: a server that is down, a wrong port or a wrong path fails the
// replay at once instead of being retried for --retry-for.
func (h *httpSink) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stats struct {
		LogEnd *json.RawMessage `json:"log_end_offset"`
	}
	status, msg, err := h.get(ctx, "/v1/stats", &stats)
	switch {
	case err != nil:
		return fmt.Errorf("cannot reach %s: %w", h.base, err)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return fmt.Errorf("%s answers HTTP %d: %s (give a token with the write scope: --token or RECSYS_TOKEN)", h.base, status, msg)
	case status != http.StatusOK || stats.LogEnd == nil:
		return fmt.Errorf("%s is not a recsys server: GET /v1/stats answers HTTP %d %s", h.base, status, msg)
	}
	return nil
}

// get fetches path as JSON into v and returns the status and, when not
// 200, the error message of the body.
func (h *httpSink) get(ctx context.Context, path string, v any) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+path, nil)
	if err != nil {
		return 0, "", err
	}
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		return resp.StatusCode, e.Message, nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return resp.StatusCode, "", fmt.Errorf("GET %s: %w", path, err)
	}
	return resp.StatusCode, "", nil
}

// waitApplied waits until the server has applied everything in its log
// now (so every event it acknowledged), showing the progress. It gives up
// when the applied offset does not move for --retry-for.
func (h *httpSink) waitApplied(ctx context.Context, mode string) error {
	type stats struct {
		LogEnd  uint64 `json:"log_end_offset,string"`
		Applied uint64 `json:"applied_offset,string"`
	}
	var s stats
	read := func() error {
		status, msg, err := h.get(ctx, "/v1/stats", &s)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("GET /v1/stats: HTTP %d: %s", status, msg)
		}
		return err
	}
	if err := read(); err != nil {
		return err
	}
	end, from := s.LogEnd, s.Applied
	if from >= end {
		return nil
	}
	bar := newProgress(mode, "applying", "records", int64(end-from))
	defer bar.Finish()
	moved := time.Now()
	for last := s.Applied; s.Applied < end; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if err := read(); err != nil {
			if time.Since(moved) > h.retryFor {
				return fmt.Errorf("wait for the server to apply: %w", err)
			}
			continue
		}
		if s.Applied != last {
			last, moved = s.Applied, time.Now()
		} else if time.Since(moved) > h.retryFor {
			return fmt.Errorf("the server applied nothing for %s (applied offset %d of %d)", h.retryFor, s.Applied, end)
		}
		bar.Set(int64(min(s.Applied, end)-from), 0)
	}
	return nil
}

// dirSink ingests straight into a data dir and applies as it goes.
type dirSink struct {
	eng    *datadir.Dir
	cancel context.CancelFunc
	done   chan error
}

func newDirSink(ctx context.Context, eng *datadir.Dir) *dirSink {
	uctx, cancel := context.WithCancel(context.Background())
	d := &dirSink{eng: eng, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- eng.Updater.Run(uctx) }()
	return d
}

func (d *dirSink) send(ctx context.Context, evs []*recsysv1.Event, st *replayStats) error {
	res, err := d.eng.Updater.Ingest(ctx, evs, nil)
	if err != nil {
		return err
	}
	st.accepted += int64(res.Accepted)
	for _, r := range res.Rejected {
		st.reject(r.Field, r.Code, 1)
	}
	return nil
}

func (d *dirSink) close(ctx context.Context) error {
	werr := d.eng.Updater.WaitApplied(ctx, d.eng.Log.End())
	d.cancel()
	rerr := <-d.done
	if werr != nil {
		werr = fmt.Errorf("wait for the updater: %w", werr)
	}
	return errors.Join(werr, rerr, d.eng.Close())
}
