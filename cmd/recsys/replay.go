package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater"
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
	httpClient *http.Client
}

func replayCmd() *cobra.Command {
	var o replayOpts
	cmd := &cobra.Command{
		Use:   "replay --format taobao|jsonl (--target URL | --data.dir DIR) FILE...",
		Short: "Stream event files (plain or .gz) into a running server or a data dir",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			switch {
			case o.format != "taobao" && o.format != "jsonl":
				return usageError{fmt.Errorf("format: %q is neither taobao nor jsonl", o.format)}
			case (o.target == "") == (o.dataDir == ""):
				return usageError{fmt.Errorf("give exactly one of --target and --data.dir")}
			case o.batch <= 0:
				return usageError{fmt.Errorf("batch: %d is not positive", o.batch)}
			case o.progress != "auto" && o.progress != "on" && o.progress != "off":
				return usageError{fmt.Errorf("progress: %q is not auto, on or off", o.progress)}
			case o.timeout <= 0:
				return usageError{fmt.Errorf("timeout: %s is not positive", o.timeout)}
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
	f.StringVar(&o.progress, "progress", "auto", "progress bar: auto (when stderr is a terminal), on or off")
	f.DurationVar(&o.maxSkew, "ingest.max-future-skew", 5*time.Minute, "reject events this far past the wall clock")
	o.log.bindFlags(f)
	o.store.bindFlags(f)
	f.DurationVar(&o.lateness, "ingest.allowed-lateness", time.Hour, "with --data.dir: events older than the newest event time minus this are rejected as late")
	return cmd
}

// replayStats counts what a replay did.
type replayStats struct {
	read     int64
	accepted int64
	rejected map[string]int64 // by field/code
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
	var total int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		total += fi.Size()
	}
	var snk sink
	if o.target != "" {
		snk = &httpSink{url: strings.TrimRight(o.target, "/") + "/v1/events", retryFor: o.retryFor, client: &http.Client{Timeout: o.timeout},
			logger: logger, stream: newStreamID()}
	} else {
		eng, err := openEngine(o.dataDir, o.store, ingestConfig{lateness: o.lateness, futureSkew: o.maxSkew, minFree: 64 << 20}, logger, nil)
		if err != nil {
			return err
		}
		snk = newDirSink(ctx, eng)
	}

	showBar := o.progress == "on" || (o.progress == "auto" && term.IsTerminal(int(os.Stderr.Fd())))
	var bar *progressbar.ProgressBar
	if showBar {
		bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription("replay"),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionFullWidth(),
			progressbar.OptionClearOnFinish(),
		)
	}
	st := &replayStats{rejected: map[string]int64{}}
	start := time.Now()
	lastLog := start
	progress := func() {
		rate := float64(st.read) / max(time.Since(start).Seconds(), 1e-9)
		if bar != nil {
			bar.Describe(fmt.Sprintf("replay: %d events, %.0f events/s", st.read, rate))
		} else if time.Since(lastLog) > 5*time.Second {
			lastLog = time.Now()
			logger.Info("replay progress", "events", st.read, "accepted", st.accepted, "events_per_s", int(rate))
		}
	}
	var counted io.Writer = io.Discard
	if bar != nil {
		counted = bar
	}
	batch := make([]*recsysv1.Event, 0, o.batch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := snk.send(ctx, batch, st)
		batch = batch[:0]
		progress()
		return err
	}
	runErr := func() error {
		for _, f := range files {
			err := readEvents(f, o.format, counted, func(ev *recsysv1.Event, ferr *updater.FieldError) error {
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
		}
		return flush()
	}()
	closeErr := snk.close(ctx)
	if bar != nil {
		_ = bar.Finish()
	}
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

// readEvents decodes every line of file (gzip-compressed or not) in format
// and calls fn with the event or the reason it could not be decoded. Bytes
// read from the file (before decompression) are also written to counted.
func readEvents(file, format string, counted io.Writer, fn func(*recsysv1.Event, *updater.FieldError) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(io.TeeReader(f, counted), 1<<20)
	var r io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		defer gz.Close()
		r = gz
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var ev *recsysv1.Event
		var ferr *updater.FieldError
		if format == "taobao" {
			ev, ferr = updater.DecodeTaobaoCSV(string(line))
		} else {
			ev, ferr = updater.DecodeJSONEvent(line)
		}
		if err := fn(ev, ferr); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", file, err)
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
	url      string
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
			// them by the reasons it gave.
			n := int64(0)
			for _, d := range resp.Details {
				for _, v := range d.FieldViolations {
					if n < int64(len(evs)) {
						// events[i].ts -> ts
						st.reject(v.Field[strings.LastIndexByte(v.Field, '.')+1:], v.Reason, 1)
						n++
					}
				}
			}
			if rest := int64(len(evs)) - n; rest > 0 {
				st.reject("batch", "server_rejected", rest)
			}
			h.logger.Warn("server rejected a whole batch", "events", len(evs), "message", resp.Message)
			return nil
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
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

// dirSink ingests straight into a data dir and applies as it goes.
type dirSink struct {
	eng    *engine
	cancel context.CancelFunc
	done   chan error
}

func newDirSink(ctx context.Context, eng *engine) *dirSink {
	uctx, cancel := context.WithCancel(context.Background())
	d := &dirSink{eng: eng, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- eng.upd.Run(uctx) }()
	return d
}

func (d *dirSink) send(ctx context.Context, evs []*recsysv1.Event, st *replayStats) error {
	res, err := d.eng.upd.Ingest(ctx, evs, nil)
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
	werr := d.eng.upd.WaitApplied(ctx, d.eng.log.End())
	d.cancel()
	rerr := <-d.done
	if werr != nil {
		werr = fmt.Errorf("wait for the updater: %w", werr)
	}
	return errors.Join(werr, rerr, d.eng.Close())
}
