package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
)

// flightCeilingCmd serves the record batches of an Arrow IPC file on every
// DoGet, with nothing computed per request: the ceiling that make
// bench-flight sets our DoGet against (the same batches, the same Go Flight
// writer and gRPC limits, the same client, over the same loopback).
func flightCeilingCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "flight-ceiling FILE",
		Short:  "Serve an Arrow IPC file's record batches on every Flight DoGet (the ceiling of make bench-flight)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		Long: `flight-ceiling loads the record batches of an Arrow IPC file into memory
and serves them over Arrow Flight: the ticket "i/n" streams batches i, i+n,
i+2n, … (so n tickets read in parallel cover the file once); any other
ticket streams all of them. It prints "listening on HOST:PORT" and serves
until interrupted.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := newCeilingServer(args[0])
			if err != nil {
				return err
			}
			defer srv.release()
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			gs := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
			flight.RegisterFlightServiceServer(gs, srv)
			fmt.Fprintf(cmd.OutOrStdout(), "listening on %s (%d batches, %d rows)\n", lis.Addr(), len(srv.batches), srv.rows)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			go func() { <-sig; gs.Stop() }()
			return gs.Serve(lis)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address to serve Flight on")
	return cmd
}

type ceilingServer struct {
	flight.BaseFlightServer
	schema  *arrow.Schema
	batches []arrow.Record
	rows    int64
}

func newCeilingServer(path string) (*ceilingServer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := ipc.NewFileReader(f, ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer r.Close()
	s := &ceilingServer{schema: r.Schema()}
	for i := range r.NumRecords() {
		rec, err := r.Record(i)
		if err != nil {
			s.release()
			return nil, fmt.Errorf("%s: batch %d: %w", path, i, err)
		}
		rec.Retain()
		s.batches = append(s.batches, rec)
		s.rows += rec.NumRows()
	}
	if len(s.batches) == 0 {
		return nil, fmt.Errorf("%s: no record batches", path)
	}
	return s, nil
}

func (s *ceilingServer) release() {
	for _, b := range s.batches {
		b.Release()
	}
}

// DoGet streams the batches the ticket names.
func (s *ceilingServer) DoGet(t *flight.Ticket, stream flight.FlightService_DoGetServer) error {
	first, step := 0, 1
	if i, n, ok := strings.Cut(string(t.GetTicket()), "/"); ok {
		a, err1 := strconv.Atoi(i)
		b, err2 := strconv.Atoi(n)
		if err := errors.Join(err1, err2); err != nil || b < 1 || a < 0 || a >= b {
			return fmt.Errorf("ticket %q: want i/n with 0 <= i < n", t.GetTicket())
		}
		first, step = a, b
	}
	w := flight.NewRecordWriter(stream, ipc.WithSchema(s.schema))
	defer w.Close()
	for i := first; i < len(s.batches); i += step {
		if err := w.Write(s.batches[i]); err != nil {
			return err
		}
	}
	return nil
}
