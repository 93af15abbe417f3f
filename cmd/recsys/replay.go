package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
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
		snk = &httpSink{url: strings.TrimRight(o.target, "/") + "/v1/events", retryFor: o.retryFor, client: &http.Client{Timeout: time.Minute}, logger: logger}
	} else {
		eng, err := openEngine(o.dataDir, o.store, ingestConfig{o.lateness, o.maxSkew}, logger, nil)
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
	return closeErr
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
type httpSink struct {
	url      string
	retryFor time.Duration
	client   *http.Client
	logger   *slog.Logger
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
	deadline := time.Now().Add(h.retryFor)
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		resp, err := h.post(ctx, body)
		if err == nil && resp.status == http.StatusOK {
			st.accepted += resp.Accepted
			for _, r := range resp.Rejected {
				st.reject(r.Field, r.Code, 1)
			}
			return nil
		}
		if err == nil && resp.status == http.StatusBadRequest {
			// Every event of the batch was rejected by the server.
			st.reject("batch", "server_rejected", int64(len(evs)))
			h.logger.Warn("server rejected a whole batch", "events", len(evs), "message", resp.Message)
			return nil
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
}

func (h *httpSink) post(ctx context.Context, body []byte) (*ingestReply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
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
