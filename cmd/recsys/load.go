package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/streamrec/recsys/updater/synth"
)

type loadOpts struct {
	target      string
	token       string
	duration    time.Duration
	maxRequests int64
	ingestRate  int
	batch       int
	readers     int
	readIDs     int
	interval    time.Duration
}

func loadCmd() *cobra.Command {
	var o loadOpts
	cmd := &cobra.Command{
		Use:   "load --target http://127.0.0.1:8080 --duration 10m",
		Short: "Load and soak a running server on this machine: ingest and reads together, with p50/p99/p999, errors and RSS over time",
		Example: `  recsys load --target http://127.0.0.1:8080 --duration 1m
  recsys load --target http://127.0.0.1:8080 --duration 2h --ingest-rate 5000 --readers 8 --interval 5m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case o.duration <= 0 || o.duration > 24*time.Hour:
				return usageError{fmt.Errorf("duration: %s is outside (0, 24h]", o.duration)}
			case o.maxRequests <= 0:
				return usageError{fmt.Errorf("max-requests: %d is not positive", o.maxRequests)}
			case o.ingestRate < 0 || o.batch <= 0 || o.readers < 0 || o.readIDs <= 0 || o.interval <= 0:
				return usageError{fmt.Errorf("ingest-rate, batch, readers, read-ids and interval must be positive")}
			}
			if err := loopbackTarget(o.target); err != nil {
				return usageError{err}
			}
			return load(cmd.Context(), &o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.target, "target", "http://127.0.0.1:8080", "base URL of the server; loopback addresses only")
	f.StringVar(&o.token, "token", os.Getenv("RECSYS_TOKEN"), "bearer token (write scope, for ingest and reads; default $RECSYS_TOKEN)")
	f.DurationVar(&o.duration, "duration", time.Minute, "how long to run (at most 24h)")
	f.Int64Var(&o.maxRequests, "max-requests", 50_000_000, "stop after this many requests in all")
	f.IntVar(&o.ingestRate, "ingest-rate", 2_000, "events per second to ingest (0: reads only)")
	f.IntVar(&o.batch, "batch", 100, "events per ingest request")
	f.IntVar(&o.readers, "readers", 4, "concurrent closed-loop readers (features:get and recommendations)")
	f.IntVar(&o.readIDs, "read-ids", 100, "item ids per features:get")
	f.DurationVar(&o.interval, "interval", 30*time.Second, "report every interval")
	return cmd
}

// loopbackTarget refuses any target that is not on this machine's
// loopback: a load test must never leave the machine.
func loopbackTarget(target string) error {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("target: %q is not a URL", target)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("target: %s is not a loopback address (127.0.0.0/8, ::1, localhost)", host)
	}
	return nil
}

// latencies collects request latencies and errors of one kind.
type latencies struct {
	mu   sync.Mutex
	lat  []time.Duration
	errs map[string]int
}

func (l *latencies) add(d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if l.errs == nil {
			l.errs = map[string]int{}
		}
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // drop the URL: one key per kind of error
		}
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 && strings.HasPrefix(msg, "dial") {
			msg = msg[i+2:]
		}
		if len(msg) > 60 {
			msg = msg[:60]
		}
		l.errs[msg]++
		return
	}
	l.lat = append(l.lat, d)
}

// take returns and resets what was collected.
func (l *latencies) take() ([]time.Duration, map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lat, errs := l.lat, l.errs
	l.lat, l.errs = nil, nil
	return lat, errs
}

func load(ctx context.Context, o *loadOpts) error {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	base := strings.TrimRight(o.target, "/")
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: o.readers + 4}}
	if err := (&httpSink{base: base, token: o.token, client: client}).probe(ctx); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	do := func(method, path string, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		if o.token != "" {
			req.Header.Set("Authorization", "Bearer "+o.token)
		}
		req.Header.Set("Content-Type", "application/json")
		return okResponse(client.Do(req))
	}
	var requests struct {
		sync.Mutex
		n int64
	}
	budget := func() bool {
		requests.Lock()
		defer requests.Unlock()
		requests.n++
		return requests.n <= o.maxRequests
	}
	// Enough events for the whole run; their times are replaced by now.
	events := int(min(int64(o.ingestRate)*int64(o.duration/time.Second+1)+int64(o.batch), 1<<30))
	gen, err := synth.New(synth.Config{Seed: uint64(time.Now().UnixNano()), Events: max(events, o.batch), Users: 50_000, Items: 100_000, Categories: 1_000})
	if err != nil {
		return err
	}
	var ingest, reads latencies
	var itemsMu sync.Mutex
	items := make([]string, 0, 4096)
	var wg sync.WaitGroup
	if o.ingestRate > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second * time.Duration(o.batch) / time.Duration(o.ingestRate))
			defer tick.Stop()
			type ev struct {
				UserID     string `json:"user_id"`
				ItemID     string `json:"item_id"`
				CategoryID string `json:"category_id"`
				Behavior   string `json:"behavior"`
				TS         int64  `json:"ts"`
			}
			for ctx.Err() == nil && budget() {
				batch := make([]ev, o.batch)
				now := time.Now().UnixMilli()
				n := 0
				for ; n < len(batch); n++ {
					e, ok := gen.Next()
					if !ok {
						break
					}
					batch[n] = ev{e.UserID, e.ItemID, e.CategoryID, e.Behavior, now}
				}
				if n == 0 {
					return
				}
				batch = batch[:n]
				itemsMu.Lock()
				for _, e := range batch[:min(8, len(batch))] {
					if len(items) < cap(items) {
						items = append(items, e.ItemID)
					} else {
						items[rand.IntN(len(items))] = e.ItemID
					}
				}
				itemsMu.Unlock()
				body, _ := json.Marshal(map[string]any{"events": batch})
				t := time.Now()
				err := do(http.MethodPost, "/v1/events", body)
				if ctx.Err() == nil { // a request cut by the end of the run is not an error
					ingest.add(time.Since(t), err)
				}
				select {
				case <-tick.C:
				case <-ctx.Done():
				}
			}
		}()
	}
	for r := range o.readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil && budget() {
				itemsMu.Lock()
				ids := make([]string, o.readIDs)
				for i := range ids {
					if len(items) > 0 {
						ids[i] = items[rng.IntN(len(items))]
					} else {
						ids[i] = "i" + strconv.Itoa(1+rng.IntN(1000))
					}
				}
				itemsMu.Unlock()
				t := time.Now()
				var err error
				if rng.IntN(4) == 0 {
					err = do(http.MethodGet, "/v1/users/u"+strconv.Itoa(1+rng.IntN(50_000))+"/recommendations?k=20", nil)
				} else {
					body, _ := json.Marshal(map[string]any{"view": "item_features", "ids": ids})
					err = do(http.MethodPost, "/v1/features:get", body)
				}
				if ctx.Err() == nil {
					reads.add(time.Since(t), err)
				}
				if err != nil {
					time.Sleep(10 * time.Millisecond) // do not spin on a failing server
				}
			}
		}()
	}
	fmt.Printf("load: %s for %s, ingest %d events/s in batches of %d, %d readers (features:get of %d items, 1 in 4 recommendations)\n",
		base, o.duration, o.ingestRate, o.batch, o.readers, o.readIDs)
	fmt.Println("  elapsed  kind    requests   p50 ms   p99 ms  p999 ms  errors  server RSS MiB")
	start := time.Now()
	var allIngest, allReads []time.Duration
	totalErrs := map[string]int{}
	report := func() {
		rss := serverRSS(ctx, client, base)
		for _, k := range []struct {
			name string
			l    *latencies
			all  *[]time.Duration
		}{{"ingest", &ingest, &allIngest}, {"read", &reads, &allReads}} {
			lat, errs := k.l.take()
			*k.all = append(*k.all, lat...)
			n := 0
			for e, c := range errs {
				n += c
				totalErrs[k.name+": "+e] += c
			}
			fmt.Printf("  %7s  %-6s %9d %8.2f %8.2f %8.2f %7d %14.1f\n", time.Since(start).Round(time.Second), k.name, len(lat),
				pct(lat, .5), pct(lat, .99), pct(lat, .999), n, rss)
		}
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	for loop := true; loop; {
		select {
		case <-tick.C:
			report()
		case <-ctx.Done():
			loop = false
		}
	}
	wg.Wait()
	report()
	fmt.Printf("total: ingest %d requests p50 %.2f p99 %.2f p999 %.2f ms; reads %d requests p50 %.2f p99 %.2f p999 %.2f ms; errors %v\n",
		len(allIngest), pct(allIngest, .5), pct(allIngest, .99), pct(allIngest, .999),
		len(allReads), pct(allReads, .5), pct(allReads, .99), pct(allReads, .999), totalErrs)
	return nil
}

// bodySize is okResponse that also returns the body's bytes.
func bodySize(resp *http.Response, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return int(n), nil
}

// okResponse drains and closes the body of a response and fails unless it
// is a 200.
func okResponse(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// serverRSS reads process_resident_memory_bytes from the server's /metrics
// (MiB; 0 when unavailable).
func serverRSS(ctx context.Context, client *http.Client, base string) float64 {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_resident_memory_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f / (1 << 20)
		}
	}
	return 0
}
