// Command recsys is the real-time recommendation backend: a streaming
// feature store and model-update service in one binary.
//
//	recsys serve    run the updater and the REST, gRPC and Flight front doors
//	recsys replay   stream Taobao CSV or JSONL files into a server or a data dir
//	recsys gen      write a synthetic behavior stream
//	recsys bench    measure ingest and online-read speed on this machine
//	recsys config   print the effective configuration
//	recsys load     drive ingest and reads against a server for a set time
//	recsys eval     prequential evaluation of the recommenders on a behavior file
//	recsys kafka    produce to a topic, measure the Kafka update path
//	recsys backup   checkpoint a running server (state with Kafka offsets, log)
//	recsys rebuild  reset the state and re-consume the Kafka topic
//	recsys version  print the version of this binary
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/streamrec/recsys/serving"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// The first signal asks for a graceful stop. From now on the
		// signals have their default effect again, so a second one ends
		// the process at once; and a stop that overruns its budget is cut
		// short (nothing acknowledged depends on it: the log is durable).
		stop()
		grace := time.Duration(shutdownGrace.Load())
		time.AfterFunc(grace, func() {
			fmt.Fprintf(os.Stderr, "recsys: still stopping %s after the signal; exiting now\n", grace)
			os.Exit(1)
		})
	}()
	v := serving.BuildInfo().Version
	root := &cobra.Command{
		Use:           "recsys",
		Version:       v,
		Short:         "Real-time recommendation backend: streaming feature store and model updates",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), replayCmd(), genCmd(), benchCmd(), configCmd(), loadCmd(), evalCmd(), kafkaCmd(), backupCmd(), rebuildCmd(), versionCmd(), flightCeilingCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "recsys:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// shutdownGrace is how long a command may take to stop after SIGINT or
// SIGTERM before the process exits anyway (ns); serve sets it from
// --shutdown.timeout.
var shutdownGrace atomic.Int64

func init() { shutdownGrace.Store(int64(15 * time.Second)) }

// usageError marks errors in flags or configuration (exit code 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }
