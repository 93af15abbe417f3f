package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/streamrec/recsys/updater/synth"
)

func genCmd() *cobra.Command {
	var cfg synth.Config
	var format, out, start, mode string
	cmd := &cobra.Command{
		Use:   "gen [--out FILE]",
		Short: "Write a deterministic synthetic behavior stream (jsonl or Taobao CSV)",
		Long: `gen writes a synthetic behavior stream in event-time order: Zipf item
popularity, user sessions with view -> cart/fav -> purchase funnels. The same
--seed, sizes and --start give the same stream. By default the stream covers
the hour before now, so that a running server (such as make run's) accepts
all of it: events older than its watermark would be rejected as late.`,
		Example: `  recsys gen --events 100000 --out events.jsonl
  recsys gen --events 100000 | recsys replay --target http://localhost:8080 --format jsonl -
  recsys gen --start 2026-01-01T00:00:00Z --span 720h --events 10000000 --format taobao --out month.csv.gz`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "jsonl" && format != "taobao" {
				return usageError{fmt.Errorf("format: %q is neither jsonl nor taobao", format)}
			}
			if err := checkProgress(mode); err != nil {
				return usageError{err}
			}
			if start != "" {
				t, err := time.Parse(time.RFC3339, start)
				if err != nil {
					return usageError{fmt.Errorf("start: %q is not an RFC 3339 time", start)}
				}
				cfg.Start = t
			} else {
				cfg.Start = time.Now().UTC().Add(-cfg.Span)
			}
			g, err := synth.New(cfg)
			if err != nil {
				return usageError{err}
			}
			if out == "-" {
				mode = "off" // the stream itself goes to the terminal or a pipe
			}
			bar := newProgress(mode, "gen", "events", int64(cfg.Events))
			defer bar.Finish()
			return writeGenerated(g, format, out, bar)
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&cfg.Seed, "seed", 1, "random seed; the same seed and sizes give the same stream")
	f.IntVar(&cfg.Users, "users", 10_000, "number of users")
	f.IntVar(&cfg.Items, "items", 50_000, "number of items")
	f.IntVar(&cfg.Categories, "categories", 500, "number of categories")
	f.IntVar(&cfg.Events, "events", 1_000_000, "number of events")
	f.StringVar(&start, "start", "", "event time of the stream's start, RFC 3339 (default: --span before now; give it to get the same stream again)")
	f.DurationVar(&cfg.Span, "span", time.Hour, "event times spread over this span")
	f.Float64Var(&cfg.ZipfS, "zipf", 1.1, "Zipf exponent of item popularity (> 1)")
	f.StringVar(&format, "format", "jsonl", "output format: jsonl or taobao")
	f.StringVar(&out, "out", "-", "output file, - for stdout; a name ending in .gz is gzip-compressed")
	bindProgress(f, &mode)
	return cmd
}

// lineCounter counts the lines written through it into a progress.
type lineCounter struct {
	w   io.Writer
	bar *progress
}

func (c lineCounter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.bar.Add(int64(bytes.Count(b[:n], []byte{'\n'})))
	return n, err
}

func writeGenerated(g *synth.Generator, format, out string, bar *progress) (err error) {
	var w io.Writer = os.Stdout
	if out != "-" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}()
		w = f
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	w = bw
	var gz *gzip.Writer
	if strings.HasSuffix(out, ".gz") {
		gz = gzip.NewWriter(bw)
		w = gz
	}
	w = lineCounter{w, bar}
	if format == "taobao" {
		_, err = synth.WriteTaobaoCSV(w, g)
	} else {
		_, err = synth.WriteJSONL(w, g)
	}
	if err != nil {
		return err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return err
		}
	}
	return bw.Flush()
}
