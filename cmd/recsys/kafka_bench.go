package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/updater/datadir"
	"github.com/streamrec/recsys/updater/kafka"
	"github.com/streamrec/recsys/updater/synth"
)

func kafkaBenchCmd() *cobra.Command {
	var kc kafkaConfig
	var events, rate, procsPerCore int
	var lagFor time.Duration
	cmd := &cobra.Command{
		Use:   "bench --kafka.brokers HOST:PORT",
		Short: "Measure the Kafka update path on a real broker: sustained events/s with exactly-once offsets, freshness p50/p99 at a fixed rate, and lag when producers outrun the updater",
		Example: `  recsys kafka bench --kafka.brokers localhost:9092
  recsys kafka bench --kafka.brokers localhost:9092 --events 1000000 --rate 10000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(kc.Brokers) == 0 {
				return usageError{fmt.Errorf("kafka.brokers: required")}
			}
			if err := setBenchProcs(procsPerCore); err != nil {
				return err
			}
			return kafkaBench(cmd.Context(), &kc, events, rate, lagFor, cmd.OutOrStdout())
		},
	}
	kc.bindClientFlags(cmd.Flags(), "") // it makes topics of its own
	kc.bindMaxBatch(cmd.Flags())
	cmd.Flags().IntVar(&events, "events", 500_000, "events of the throughput run")
	cmd.Flags().IntVar(&rate, "rate", 20_000, "events/s of the freshness run (10 s)")
	cmd.Flags().DurationVar(&lagFor, "lag-for", 10*time.Second, "how long producers run flat out in the lag run")
	bindBenchProcs(cmd.Flags(), &procsPerCore)
	return cmd
}

// benchEnv is a fresh data dir and topic for one bench run.
type benchEnv struct {
	eng   *datadir.Dir
	dir   string
	topic string
}

func newBenchEnv(ctx context.Context, kc *kafkaConfig, name string) (*benchEnv, error) {
	dir, err := os.MkdirTemp("", "recsys-kafka-bench-")
	if err != nil {
		return nil, err
	}
	topic := fmt.Sprintf("bench-%s-%d", name, time.Now().UnixNano())
	if err := kafka.CreateTopic(ctx, kc.Brokers, topic, 4); err != nil {
		return nil, err
	}
	sc := defaultStoreConfig()
	sc.Clock = "event"
	eng, err := openDataDir(dir, sc, ingestConfig{lateness: time.Hour, futureSkew: 5 * time.Minute, kafka: true}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil)
	if err != nil {
		return nil, err
	}
	return &benchEnv{eng: eng, dir: dir, topic: topic}, nil
}

func (b *benchEnv) close() {
	_ = b.eng.Close()
	_ = os.RemoveAll(b.dir)
}

func (b *benchEnv) consumer(kc *kafkaConfig, stop map[int32]int64) (*kafka.Consumer, error) {
	return kafka.New(b.eng.Store, kafka.Options{Brokers: kc.Brokers, Topic: b.topic, Group: b.topic, StopAt: stop,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxBatch: kc.MaxBatch})
}

// benchProducer produces synthetic events (times in the last half hour)
// at rate events/s (0: flat out) until n are sent or ctx is done.
func benchProducer(ctx context.Context, kc *kafkaConfig, topic string, n, rate int, sent *atomic.Int64) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(kc.Brokers...), kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(2*time.Millisecond), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	now := time.Now()
	gen, err := synth.New(synth.Config{Seed: 7, Users: 100_000, Items: 200_000, Categories: 500, Events: n, Start: now.Add(-30 * time.Minute), Span: 30 * time.Minute})
	if err != nil {
		return err
	}
	var perr atomic.Value
	start := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		ev, ok := gen.Next()
		if !ok {
			break
		}
		if rate > 0 && i%100 == 0 {
			if d := time.Until(start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
		}
		rec, err := kafka.EventRecord(&recsysv1.Event{UserId: ev.UserID, ItemId: ev.ItemID, CategoryId: ev.CategoryID, Behavior: ev.Behavior, Ts: ev.TS})
		if err != nil {
			return err
		}
		cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			switch {
			case err == nil:
				sent.Add(1) // acknowledged by the broker
			case ctx.Err() == nil:
				perr.CompareAndSwap(nil, err)
			}
		})
	}
	if err := cl.Flush(context.Background()); err != nil {
		return err
	}
	if err, _ := perr.Load().(error); err != nil {
		return err
	}
	return nil
}

func kafkaBench(ctx context.Context, kc *kafkaConfig, events, rate int, lagFor time.Duration, out io.Writer) error {
	// 1. Sustained throughput: the topic holds n events; the updater reads
	// them through decode, validation, Store.ApplyWith with its offsets.
	{
		env, err := newBenchEnv(ctx, kc, "throughput")
		if err != nil {
			return err
		}
		var sent atomic.Int64
		if err := benchProducer(ctx, kc, env.topic, events, 0, &sent); err != nil {
			env.close()
			return err
		}
		end, err := kafka.EndOffsets(ctx, kc.Brokers, env.topic)
		if err != nil {
			env.close()
			return err
		}
		c, err := env.consumer(kc, end)
		if err != nil {
			env.close()
			return err
		}
		start := time.Now()
		err = c.Run(ctx)
		took := time.Since(start)
		st := env.eng.Store.Stats()
		env.close()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "kafka throughput: %d events from the broker applied in %s: %.0f events/s (exactly-once offsets in the apply batch; %d applied, %d duplicates)\n",
			sent.Load(), took.Round(time.Millisecond), float64(sent.Load())/took.Seconds(), st.Events, st.Duplicates)
	}
	// 2. Freshness at a fixed rate: record timestamp (set by the producer
	// client) to the commit of the batch that made it readable.
	{
		env, err := newBenchEnv(ctx, kc, "freshness")
		if err != nil {
			return err
		}
		c, err := env.consumer(kc, nil)
		if err != nil {
			env.close()
			return err
		}
		var mu sync.Mutex
		var fresh []time.Duration
		c.OnApply(func(b kafka.BatchInfo) {
			mu.Lock()
			fresh = append(fresh, b.Freshness...)
			mu.Unlock()
		})
		cctx, cancel := context.WithCancel(ctx)
		g, gctx := errgroup.WithContext(cctx)
		g.Go(func() error { return c.Run(gctx) })
		n := rate * 10
		var sent atomic.Int64
		perr := benchProducer(ctx, kc, env.topic, n, rate, &sent)
		for perr == nil && ctx.Err() == nil {
			mu.Lock()
			done := len(fresh) >= int(sent.Load())
			mu.Unlock()
			if done {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		err = g.Wait()
		env.close()
		if perr != nil {
			return perr
		}
		if err != nil {
			return err
		}
		slices.Sort(fresh)
		q := func(p float64) time.Duration { return fresh[min(len(fresh)-1, int(p*float64(len(fresh))))] }
		fmt.Fprintf(out, "kafka freshness at %d events/s (%d events): p50 %s, p99 %s, max %s (record timestamp to readable)\n",
			rate, len(fresh), q(0.50).Round(100*time.Microsecond), q(0.99).Round(100*time.Microsecond), fresh[len(fresh)-1].Round(time.Millisecond))
	}
	// 3. Producers flat out: sample the lag (end offsets minus the stored
	// offsets) and the heap every second, then the drain.
	{
		env, err := newBenchEnv(ctx, kc, "lag")
		if err != nil {
			return err
		}
		defer env.close()
		c, err := env.consumer(kc, nil)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		g, gctx := errgroup.WithContext(cctx)
		g.Go(func() error { return c.Run(gctx) })
		var sent atomic.Int64
		pctx, pcancel := context.WithTimeout(ctx, lagFor)
		defer pcancel()
		pdone := make(chan error, 1)
		go func() { pdone <- benchProducer(pctx, kc, env.topic, 1<<30, 0, &sent) }()
		start := time.Now()
		var producing = true
		var maxHeap uint64
		for {
			time.Sleep(time.Second)
			select {
			case err := <-pdone:
				if err != nil && pctx.Err() == nil {
					return err
				}
				producing = false
			default:
			}
			pos, err := kafka.Positions(env.eng.Store, env.topic)
			if err != nil {
				return err
			}
			var applied int64
			for _, o := range pos {
				applied += o
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapInuse)
			lag := sent.Load() - applied
			phase := "producing"
			if !producing {
				phase = "draining"
			}
			fmt.Fprintf(out, "kafka lag t=%2.0fs %-9s produced %8d applied %8d lag %8d heap %4d MiB\n",
				time.Since(start).Seconds(), phase, sent.Load(), applied, lag, ms.HeapInuse>>20)
			if !producing && lag <= 0 {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		fmt.Fprintf(out, "kafka lag: drained %d events in %s; peak heap %d MiB\n", sent.Load(), time.Since(start).Round(time.Second), maxHeap>>20)
		cancel()
		return g.Wait()
	}
}
