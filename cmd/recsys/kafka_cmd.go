package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/eventfile"
	"github.com/streamrec/recsys/updater/kafka"
)

// kafkaCmd groups the Kafka tools: produce (load a topic) and bench.
func kafkaCmd() *cobra.Command {
	root := &cobra.Command{Use: "kafka", Short: "Kafka tools: load a topic, measure the Kafka update path",
		Example: `  recsys kafka produce --kafka.brokers localhost:9092 --kafka.topic events ../shared/data/taobao/UserBehavior-hot-110k.csv.gz
  recsys kafka dump --kafka.brokers localhost:9092 --kafka.topic events.dlq`}
	root.AddCommand(kafkaProduceCmd(), kafkaBenchCmd(), kafkaDumpCmd())
	return root
}

// kafkaDumpCmd prints every record of a topic up to its current end as
// JSON lines (tests read the dead-letter topic with it).
func kafkaDumpCmd() *cobra.Command {
	var kc kafkaConfig
	cmd := &cobra.Command{
		Use:     "dump --kafka.brokers HOST:PORT --kafka.topic TOPIC",
		Short:   "Print the records of a topic up to its current end as JSON lines: partition, offset, key, headers, value",
		Example: `  recsys kafka dump --kafka.brokers localhost:9092 --kafka.topic events.dlq | head`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			end, err := kafka.EndOffsets(ctx, kc.Brokers, kc.Topic)
			if err != nil {
				return err
			}
			parts := map[int32]kgo.Offset{}
			left := 0
			for p, e := range end {
				if e > 0 {
					parts[p] = kgo.NewOffset().AtStart()
					left++
				}
			}
			if left == 0 {
				return nil
			}
			cl, err := kgo.NewClient(kgo.SeedBrokers(kc.Brokers...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{kc.Topic: parts}))
			if err != nil {
				return err
			}
			defer cl.Close()
			enc := json.NewEncoder(cmd.OutOrStdout())
			for left > 0 {
				fs := cl.PollFetches(ctx)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				var perr error
				fs.EachRecord(func(r *kgo.Record) {
					if r.Offset >= end[r.Partition] {
						return
					}
					h := map[string]string{}
					for _, x := range r.Headers {
						h[x.Key] = string(x.Value)
					}
					if err := enc.Encode(map[string]any{"partition": r.Partition, "offset": r.Offset, "key": string(r.Key), "headers": h, "value": string(r.Value)}); err != nil {
						perr = err
					}
					if r.Offset == end[r.Partition]-1 {
						left--
					}
				})
				if perr != nil {
					return perr
				}
			}
			return nil
		},
	}
	kc.bindClientFlags(cmd.Flags(), "topic to print")
	return cmd
}

func kafkaProduceCmd() *cobra.Command {
	var kc kafkaConfig
	var format, mode string
	var partitions int32
	var rate float64
	cmd := &cobra.Command{
		Use:   "produce --kafka.brokers HOST:PORT [--format taobao|lines] FILE...",
		Short: "Produce events to a topic (taobao: CSV lines as protobuf events keyed by user; lines: each line verbatim as a value) and print the end offsets as JSON",
		Example: `  recsys kafka produce --kafka.brokers localhost:9092 --kafka.topic events ../shared/data/taobao/UserBehavior-hot-110k.csv.gz
  recsys gen --events 100000 --out events.jsonl && recsys kafka produce --kafka.brokers localhost:9092 --format lines events.jsonl`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			if len(kc.Brokers) == 0 {
				return usageError{fmt.Errorf("kafka.brokers: required")}
			}
			if format != "taobao" && format != "lines" {
				return usageError{fmt.Errorf("format: %q is neither taobao nor lines", format)}
			}
			if err := checkProgress(mode); err != nil {
				return usageError{err}
			}
			var total int64 = -1
			if mode != "off" {
				var err error
				if total, err = eventfile.Count(files); err != nil {
					return err
				}
			}
			bar := newProgress(mode, "produce", "records", total)
			defer bar.Finish()
			return produceFiles(cmd.Context(), &kc, format, partitions, rate, files, cmd.OutOrStdout(), bar)
		},
	}
	kc.bindClientFlags(cmd.Flags(), "topic to produce to (created with --partitions if missing)")
	cmd.Flags().StringVar(&format, "format", "taobao", "taobao (user,item,category,behavior,seconds CSV, gzip or not) or lines (one record value per line, sent as is without a content-type header)")
	cmd.Flags().Int32Var(&partitions, "partitions", 4, "partitions of the topic if it has to be created")
	cmd.Flags().Float64Var(&rate, "rate", 0, "records per second (0: as fast as the broker takes them)")
	bindProgress(cmd.Flags(), &mode)
	return cmd
}

// produceFiles produces every line of files and prints
// {"records": n, "skipped": n, "end_offsets": {"0": n, ...}}.
func produceFiles(ctx context.Context, kc *kafkaConfig, format string, partitions int32, rate float64, files []string, out io.Writer, bar *progress) error {
	if err := kafka.CreateTopic(ctx, kc.Brokers, kc.Topic, partitions); err != nil {
		return err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(kc.Brokers...), kgo.DefaultProduceTopic(kc.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(50_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	var sent, skipped int64
	var firstErr atomic.Value
	start := time.Now()
	for _, file := range files {
		err := eventfile.Lines(file, func(line []byte) error {
			var rec *kgo.Record
			if format == "taobao" {
				ev, ferr := updater.DecodeTaobaoCSV(string(line))
				if ferr != nil {
					skipped++
					bar.Add(1)
					return nil
				}
				var err error
				if rec, err = kafka.EventRecord(ev); err != nil {
					return err
				}
			} else {
				var k struct {
					UserID json.RawMessage `json:"user_id"`
				}
				_ = json.Unmarshal(line, &k)
				rec = &kgo.Record{Key: bytes.Trim(k.UserID, `"`), Value: append([]byte(nil), line...)}
			}
			if rate > 0 {
				if d := time.Until(start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
			}
			sent++
			cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
				bar.Add(1) // acknowledged by the broker
			})
			if err, _ := firstErr.Load().(error); err != nil {
				return err
			}
			return ctx.Err()
		})
		if err != nil {
			return fmt.Errorf("produce %s: %w", file, err)
		}
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	end, err := kafka.EndOffsets(ctx, kc.Brokers, kc.Topic)
	if err != nil {
		return err
	}
	ends := map[string]int64{}
	for p, o := range end {
		ends[fmt.Sprint(p)] = o
	}
	return json.NewEncoder(out).Encode(map[string]any{"records": sent, "skipped": skipped, "end_offsets": ends})
}

// backupCmd asks a running server for a checkpoint (the Flight backup
// action): the store, with the Kafka offsets, then the embedded log.
func backupCmd() *cobra.Command {
	var to, addr, token string
	cmd := &cobra.Command{
		Use:   "backup --to DIR [--flight.addr HOST:PORT]",
		Short: "Write a consistent checkpoint of a running server's data dir (state with its Kafka offsets, and the event log) to DIR under the server's --backup.dir",
		Long: `backup asks a running server for a consistent checkpoint of its data dir.
The server writes it on its own machine, only under the directory given to
its --backup.dir (backups are refused without it): DIR is a new directory's
name relative to that root, or an absolute path inside it.`,
		Example: `  recsys serve --data.dir /var/lib/recsys/data --backup.dir /var/lib/recsys/backups &
  recsys backup --to nightly-2026-12-01`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return usageError{fmt.Errorf("to: required")}
			}
			c, err := flight.NewClientWithMiddleware(addr, nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			}
			body, _ := json.Marshal(map[string]string{"dir": to})
			stream, err := c.DoAction(ctx, &flight.Action{Type: "backup", Body: body})
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			res, err := stream.Recv()
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(res.Body))
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "checkpoint directory, relative to the server's --backup.dir or an absolute path inside it (must not exist)")
	cmd.Flags().StringVar(&addr, "flight.addr", "127.0.0.1:8815", "the server's Arrow Flight address")
	cmd.Flags().StringVar(&token, "token", os.Getenv("RECSYS_TOKEN"), "bearer token with the admin scope (default $RECSYS_TOKEN)")
	return cmd
}

// rebuildCmd resets the state of a data dir and re-consumes the topic.
func rebuildCmd() *cobra.Command {
	var cfg config
	var cfgFile, from, mode string
	var all *pflag.FlagSet
	cmd := &cobra.Command{
		Use:   "rebuild --data.dir DIR --kafka.brokers HOST:PORT [--from-time RFC3339]",
		Short: "Reset the feature state of a data dir and re-consume the Kafka topic from the start (or a time) up to its current end; the server must be stopped",
		Example: `  recsys rebuild --data.dir /var/lib/recsys --kafka.brokers localhost:9092
  recsys rebuild --config recsys.yaml --from-time 2026-11-24T00:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := resolveConfig(cfgFile, all); err != nil {
				return usageError{err}
			}
			if err := cfg.validate(); err != nil {
				return usageError{err}
			}
			if len(cfg.Kafka.Brokers) == 0 {
				return usageError{fmt.Errorf("kafka.brokers: required")}
			}
			var fromMS int64 = -1
			if from != "" {
				t, err := time.Parse(time.RFC3339, from)
				if err != nil {
					return usageError{fmt.Errorf("from-time: %w", err)}
				}
				fromMS = t.UnixMilli()
			}
			return rebuild(cmd.Context(), &cfg, fromMS, mode, cmd.OutOrStdout())
		},
	}
	// The configuration file is serve's, so every key is accepted from it,
	// but only the flags that matter to a rebuild are offered.
	all = pflag.NewFlagSet("rebuild", pflag.ContinueOnError)
	cfg.bindFlags(all)
	all.VisitAll(func(f *pflag.Flag) {
		if rebuildFlag(f.Name) {
			cmd.Flags().AddFlag(f)
		}
	})
	cmd.Flags().StringVar(&cfgFile, "config", "", "serve's YAML configuration file (default $RECSYS_CONFIG); RECSYS_* variables and flags override it")
	bindProgress(cmd.Flags(), &mode)
	cmd.Flags().StringVar(&from, "from-time", "", "start at the first record of each partition at or after this time (RFC 3339) instead of the beginning")
	return cmd
}

// rebuildFlag reports whether serve's flag name applies to rebuild: the
// data dir, the feature engine, the event-time policy, Kafka and logging.
func rebuildFlag(name string) bool {
	for _, p := range []string{"data.", "state.", "models.", "kafka.", "log."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	switch name {
	case "features", "clock", "dedup-horizon", "ingest.allowed-lateness", "ingest.max-future-skew", "ingest.min-free-bytes":
		return true
	}
	return false
}

func rebuild(ctx context.Context, cfg *config, fromMS int64, mode string, out io.Writer) error {
	logger := cfg.Log.logger()
	kc := &cfg.Kafka
	end, err := kafka.EndOffsets(ctx, kc.Brokers, kc.Topic)
	if err != nil {
		return err
	}
	var start map[int32]int64
	if fromMS >= 0 {
		if start, err = kafka.OffsetsAfter(ctx, kc.Brokers, kc.Topic, fromMS); err != nil {
			return err
		}
	}
	state := filepath.Join(cfg.Data.Dir, "state")
	logger.Info("rebuild: removing the state", "dir", state)
	if err := os.RemoveAll(state); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	ing := ingestConfig{lateness: cfg.Ingest.AllowedLateness, futureSkew: cfg.Ingest.MaxFutureSkew, minFree: uint64(cfg.Ingest.MinFreeBytes), kafka: true}
	eng, err := openDataDir(cfg.Data.Dir, cfg.Store, ing, logger, nil, nil)
	if err != nil {
		return err
	}
	defer eng.Close()
	if start != nil {
		if err := kafka.SetPositions(eng.Store, kc.Topic, start); err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
	}
	opts := kc.consumerOptions(ing, logger, nil)
	opts.StopAt = end
	c, err := kafka.New(eng.Store, opts)
	if err != nil {
		return err
	}
	var total int64
	for p, e := range end {
		total += e - start[p] // start[p] is 0 without --from-time
	}
	bar := newProgress(mode, "rebuild", "records", total)
	base := eng.Store.Stats()
	baseDL := eng.Store.DeadLetterCount()
	stopBar := every(500*time.Millisecond, func() {
		st := eng.Store.Stats()
		bar.Set(int64(st.Events-base.Events+st.Duplicates-base.Duplicates+eng.Store.DeadLetterCount()-baseDL), 0)
	})
	began := time.Now()
	err = c.Run(ctx)
	stopBar()
	bar.Finish()
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("rebuild: interrupted; run it again")
	}
	st := eng.Store.Stats()
	return json.NewEncoder(out).Encode(map[string]any{"events": st.Events, "duplicates": st.Duplicates, "dead_letters": eng.Store.DeadLetterCount(),
		"seconds": time.Since(began).Seconds()})
}
