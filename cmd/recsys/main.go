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
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "recsys",
		Short:         "Real-time recommendation backend: streaming feature store and model updates",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), replayCmd(), genCmd(), benchCmd(), configCmd(), loadCmd(), evalCmd(), kafkaCmd(), backupCmd(), rebuildCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "recsys:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks errors in flags or configuration (exit code 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }
