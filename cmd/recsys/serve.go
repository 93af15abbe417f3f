package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/serving"
	"github.com/streamrec/recsys/updater"
	"github.com/streamrec/recsys/updater/datadir"
	"github.com/streamrec/recsys/updater/eventfile"
	"github.com/streamrec/recsys/updater/synth"
)

func serveCmd() *cobra.Command {
	var cfg config
	var cfgFile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the updater and the REST, gRPC and Arrow Flight servers",
		Example: `  recsys serve --demo
  recsys serve --data.dir /var/lib/recsys --auth.token-file tokens.txt --tls.cert cert.pem --tls.key key.pem
  recsys serve --load ../shared/data/taobao/UserBehavior-users-84k.csv.gz
  recsys serve --config recsys.yaml --kafka.brokers kafka-1:9092,kafka-2:9092`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := resolveConfig(cfgFile, cmd.Flags()); err != nil {
				return usageError{err}
			}
			if err := cfg.validate(); err != nil {
				return usageError{err}
			}
			if len(cfg.Load.Files) > 0 && !cmd.Flags().Lookup("clock").Changed {
				cfg.Store.Clock = "event" // loaded files are history: read as of their newest event
			}
			return serve(cmd.Context(), &cfg)
		},
	}
	cfg.bindFlags(cmd.Flags())
	cmd.Flags().StringVar(&cfgFile, "config", "", "YAML configuration file (default $RECSYS_CONFIG); RECSYS_* variables and flags override it")
	return cmd
}

func configCmd() *cobra.Command {
	root := &cobra.Command{Use: "config", Short: "Inspect the configuration of recsys serve", Example: "  recsys config print --config recsys.yaml"}
	var cfg config
	var cfgFile string
	print := &cobra.Command{
		Use:   "print [--config FILE] [serve flags]",
		Short: "Print the effective configuration of recsys serve as YAML (defaults < file < RECSYS_* environment < flags), each value's source in a comment",
		Example: `  recsys config print --data.dir /var/lib/recsys > recsys.yaml
  recsys serve --config recsys.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			source, err := resolveConfig(cfgFile, cmd.Flags())
			if err != nil {
				return usageError{err}
			}
			if err := printConfig(cmd.OutOrStdout(), cmd.Flags(), source); err != nil {
				return err
			}
			if err := cfg.validate(); err != nil {
				return usageError{err}
			}
			return nil
		},
	}
	cfg.bindFlags(print.Flags())
	print.Flags().StringVar(&cfgFile, "config", "", "YAML configuration file")
	root.AddCommand(print)
	return root
}

func serve(ctx context.Context, cfg *config) error {
	logger := cfg.Log.logger()
	applyProcs(cfg.Runtime.ProcsPerCore, logger)
	var tokens serving.Tokens
	if cfg.Auth.TokenFile != "" {
		var err error
		if tokens, err = serving.LoadTokens(cfg.Auth.TokenFile); err != nil {
			return usageError{err}
		}
	} else if !cfg.Auth.AllowRemote {
		for _, a := range []struct {
			name string
			addr *string
		}{{"http.addr", &cfg.HTTP.Addr}, {"grpc.addr", &cfg.GRPC.Addr}, {"flight.addr", &cfg.Flight.Addr}} {
			addr, err := loopbackOnly(*a.addr)
			if err != nil {
				return usageError{fmt.Errorf("%s: %w", a.name, err)}
			}
			*a.addr = addr
		}
		logger.Warn("no --auth.token-file: every call is allowed, so the server listens on loopback only (--auth.allow-unauthenticated-remote to override)")
	}
	tlsCfg, err := serverTLS(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.ClientCA)
	if err != nil {
		return usageError{err}
	}
	reg := prometheus.NewRegistry()
	ing := ingestConfig{lateness: cfg.Ingest.AllowedLateness, futureSkew: cfg.Ingest.MaxFutureSkew, minFree: uint64(cfg.Ingest.MinFreeBytes), kafka: len(cfg.Kafka.Brokers) > 0}
	kafkaSrc, err := newKafkaSource(&cfg.Kafka, ing) // nil without --kafka.brokers
	if err != nil {
		return err
	}
	defer kafkaSrc.Close()
	eng, err := openDataDir(cfg.Data.Dir, cfg.Store, ing, logger, reg, kafkaSrc.publisher())
	if err != nil {
		return err
	}
	defer func() {
		if err := eng.Close(); err != nil {
			logger.Error("close data dir", "err", err)
		}
	}()
	metrics := serving.NewMetrics(reg, eng.Store, eng.Models, eng.Updater)
	sopts := serving.Options{
		Logger:       logger,
		MaxBatch:     cfg.Ingest.MaxBatch,
		MaxBodyBytes: cfg.Ingest.MaxBodyBytes,
		Metrics:      metrics,
		MaxReadyLag:  cfg.Readyz.MaxLag,
	}
	if kafkaSrc != nil {
		sopts.Source = kafkaSrc.progress
	}
	// A demo stream or files loaded at the first start make the server
	// ready only once they are applied, so that what a newcomer reads
	// first is the loaded data and what they post next shows at once.
	var gate startGate
	firstLoad := eng.Log.End() == 0 && (cfg.Demo.Enabled || len(cfg.Load.Files) > 0)
	if firstLoad {
		gate.set("loading the initial events")
	}
	sopts.Starting = gate.get
	srv := serving.New(eng.Store, eng.Models, eng.Updater, sopts)
	guard := func(name string) *serving.Guard {
		return serving.NewGuard(name, tokens, cfg.Limits.MaxInFlight, cfg.Limits.RequestTimeout, metrics)
	}

	var lc net.ListenConfig
	listen := func(name, addr string) (net.Listener, error) {
		l, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s.addr: %w", name, err)
		}
		return l, nil
	}
	httpL, err := listen("http", cfg.HTTP.Addr)
	if err != nil {
		return err
	}
	grpcL, err := listen("grpc", cfg.GRPC.Addr)
	if err != nil {
		return err
	}
	flightL, err := listen("flight", cfg.Flight.Addr)
	if err != nil {
		return err
	}

	var creds []grpc.ServerOption
	if tlsCfg != nil {
		creds = append(creds, grpc.Creds(credentials.NewTLS(tlsCfg)))
		httpL = tls.NewListener(httpL, tlsCfg)
	}
	grpcSrv, hs := srv.GRPCServer(append(append(creds, grpc.MaxRecvMsgSize(int(cfg.Ingest.MaxBodyBytes))), guard("grpc").ServerOptions()...)...)
	var backups *serving.BackupRoot
	if cfg.Backup.Dir != "" {
		if backups, err = serving.NewBackupRoot(cfg.Backup.Dir, cfg.Data.Dir); err != nil {
			return usageError{err}
		}
	}
	spillDir := cfg.Flight.SpillDir
	if spillDir == "" {
		spillDir = cfg.Data.Dir
	}
	flightSrv := serving.NewFlightServer(eng.Store, eng.Models, nil).WithUpdater(eng.Updater).WithBackups(backups).
		WithSpill(spillDir, cfg.Flight.MaxSpillBytes, uint64(cfg.Ingest.MinFreeBytes)).WithSnapshotBytes(snapshotBytes(cfg.Flight.SnapshotMB)).GRPCServer(append(creds, guard("flight").ServerOptions()...)...)

	handler, err := srv.HTTPHandler(ctx)
	if err != nil {
		return err
	}
	// ReadTimeout bounds reading a whole request, body included, so that a
	// slow client cannot hold a concurrency slot past the request deadline.
	// Bodies are read before a concurrency slot is taken (WithBodyPrefetch),
	// so slow uploads cannot starve other requests of slots.
	httpSrv := &http.Server{Handler: guard("http").WithBodyPrefetch(cfg.Ingest.MaxBodyBytes).HTTPMiddleware(handler), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: cfg.Limits.RequestTimeout, IdleTimeout: 2 * time.Minute}

	g, gctx := errgroup.WithContext(ctx)
	// The updater runs on its own context so that it can drain the log after
	// the front doors have stopped.
	updCtx, stopUpd := context.WithCancel(context.Background())
	defer stopUpd()
	if kafkaSrc != nil {
		g.Go(func() error { return kafkaSrc.Run(updCtx, eng, cfg, logger, reg) })
	} else {
		g.Go(func() error { return eng.Updater.Run(updCtx) })
	}
	g.Go(func() error { return ignoreClosed(httpSrv.Serve(httpL)) })
	g.Go(func() error { return grpcSrv.Serve(grpcL) })
	g.Go(func() error { return flightSrv.Serve(flightL) })
	if firstLoad {
		g.Go(func() error {
			what, err := loadInitial(gctx, cfg, eng, &gate, logger)
			if err != nil || gctx.Err() != nil {
				return err
			}
			gate.set("")
			fmt.Printf("recsys ready: %s applied. Fresh data, for example:\n%s", what, tryCurls(scheme(cfg), hostPort(httpL.Addr()), cfg.Demo.Enabled))
			return nil
		})
	} else if cfg.Demo.Enabled || len(cfg.Load.Files) > 0 {
		logger.Info("the event log is not empty: not loading the demo stream or --load files again")
	}
	// A stop gets --shutdown.timeout in all: the front doors stop
	// accepting and finish what is in flight (cut off at 60% of it), then
	// the updater applies what it can of the accepted events in the rest.
	// Past the budget (and a few seconds to close the data dir) main exits
	// anyway: accepted events are durable in the log, so nothing depends on
	// finishing.
	shutdownGrace.Store(int64(cfg.Shutdown.Timeout + 5*time.Second))
	g.Go(func() error {
		<-gctx.Done()
		logger.Info("shutting down", "timeout", cfg.Shutdown.Timeout)
		start := time.Now()
		hs.Shutdown()
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Timeout*6/10)
		defer cancel()
		var wg sync.WaitGroup
		var err error
		wg.Add(3)
		go func() {
			defer wg.Done()
			if err = httpSrv.Shutdown(sctx); err != nil {
				_ = httpSrv.Close() // connections still busy at the deadline
			}
		}()
		go func() { defer wg.Done(); gracefulStop(sctx, grpcSrv) }()
		go func() { defer wg.Done(); gracefulStop(sctx, flightSrv) }()
		wg.Wait()
		// Accepted events are durable in the log already; applying them now
		// only saves work at the next start.
		dctx, dcancel := context.WithTimeout(context.Background(), max(cfg.Shutdown.Timeout-time.Since(start), 0))
		defer dcancel()
		if derr := eng.Updater.WaitApplied(dctx, eng.Log.End()); derr != nil {
			logger.Warn("updater did not catch up before shutdown; the rest is applied at the next start", "err", derr)
		}
		stopUpd()
		if errors.Is(err, context.DeadlineExceeded) {
			logger.Warn("requests still in flight at the shutdown deadline were cut off")
			err = nil
		}
		return ignoreClosed(err)
	})

	fscheme := "grpc"
	if tlsCfg != nil {
		fscheme = "grpc+tls"
	}
	fmt.Printf("recsys serving (data dir %s)\n  REST:   %s://%s  (OpenAPI at /openapi.json, metrics at /metrics)\n  gRPC:   %s\n  Flight: %s://%s\n",
		cfg.Data.Dir, scheme(cfg), hostPort(httpL.Addr()), hostPort(grpcL.Addr()), fscheme, hostPort(flightL.Addr()))
	if firstLoad {
		fmt.Println("loading the initial events; /readyz reports ready once they are applied")
	}
	logger.Info("listening", "http", httpL.Addr().String(), "grpc", grpcL.Addr().String(), "flight", flightL.Addr().String(),
		"applied_offset", eng.Store.AppliedOffset(), "log_end", eng.Log.End())
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// loopbackOnly replaces an unspecified host (":8080", "0.0.0.0:8080") by
// the loopback address and refuses any other host that is not loopback.
func loopbackOnly(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	switch {
	case host == "" || (ip != nil && ip.IsUnspecified()):
		return net.JoinHostPort("127.0.0.1", port), nil
	case host == "localhost" || (ip != nil && ip.IsLoopback()):
		return addr, nil
	}
	return "", fmt.Errorf("%s is not a loopback address: without --auth.token-file the server listens on loopback only (--auth.allow-unauthenticated-remote to override)", host)
}

// serverTLS builds the TLS configuration of the three listeners; nil
// without a certificate. With a client CA, clients must present a
// certificate it signed (mTLS).
func serverTLS(cert, key, clientCA string) (*tls.Config, error) {
	if cert == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("tls.cert, tls.key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("tls.client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client-ca: no PEM certificate in %s", clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func gracefulStop(ctx context.Context, s *grpc.Server) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.Stop()
	}
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// hostPort renders a listen address for humans: unspecified hosts become
// localhost.
func hostPort(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// startGate holds why the server is not ready yet while it starts ("":
// ready as far as starting goes).
type startGate struct{ reason atomic.Pointer[string] }

func (g *startGate) set(r string) { g.reason.Store(&r) }

func (g *startGate) get() string {
	if r := g.reason.Load(); r != nil {
		return *r
	}
	return ""
}

func scheme(cfg *config) string {
	if cfg.TLS.Cert != "" {
		return "https"
	}
	return "http"
}

// tryCurls are the commands the ready message suggests: an event, then its
// effect on the user's features.
func tryCurls(scheme, addr string, demo bool) string {
	base := addr
	if scheme == "https" {
		base = "https://" + addr
	}
	user, item, cat := "u1", "i42", "c7"
	if !demo {
		user, item, cat = "newcomer", "42", "7"
	}
	return fmt.Sprintf(`  curl -XPOST %[1]s/v1/events -H 'Content-Type: application/json' -d '{"events":[{"user_id":"%[2]s","item_id":"%[3]s","category_id":"%[4]s","behavior":"cart","ts":'$(date +%%s000)'}]}'
  curl %[1]s/v1/users/%[2]s/features    # cart_count_1h counts the cart just posted
  curl '%[1]s/v1/users/%[2]s/recommendations?k=10'
`, base, user, item, cat)
}

// loadInitial ingests the demo stream or the --load files into the empty
// log, waits until they are applied (the gate says how far) and returns
// what was loaded.
func loadInitial(ctx context.Context, cfg *config, eng *datadir.Dir, gate *startGate, logger *slog.Logger) (string, error) {
	start := time.Now()
	var what string
	if cfg.Demo.Enabled {
		gate.set("loading the demo stream")
		n, err := loadDemo(ctx, eng, cfg.Demo.Events)
		if err != nil {
			return "", err
		}
		what = fmt.Sprintf("the demo stream (%d events over the last 24 h; users u1 to u2000, items i1 to i5000)", n)
	} else {
		gate.set("loading " + strings.Join(cfg.Load.Files, ", "))
		n, rejected, err := loadFiles(ctx, eng, cfg.Load.Files, cfg.Load.Format)
		if err != nil {
			return "", err
		}
		what = fmt.Sprintf("%s (%d events", strings.Join(cfg.Load.Files, ", "), n)
		if rejected > 0 {
			what += fmt.Sprintf(", %d rejected: /v1/dead-letters", rejected)
		}
		what += ")"
	}
	end := eng.Log.End()
	stopGate := every(500*time.Millisecond, func() {
		gate.set(fmt.Sprintf("loading the initial events: %d of %d applied", eng.Store.AppliedOffset(), end))
	})
	err := eng.Updater.WaitApplied(ctx, end)
	stopGate()
	if err != nil {
		if ctx.Err() != nil {
			return "", nil
		}
		return "", fmt.Errorf("initial events: %w", err)
	}
	logger.Info("initial events applied", "what", what, "took", time.Since(start).Round(time.Millisecond))
	return what, nil
}

// loadDemo ingests a synthetic stream of n events whose event times cover
// the last 24 hours.
func loadDemo(ctx context.Context, eng *datadir.Dir, n int) (int, error) {
	now := time.Now()
	gen, err := synth.New(synth.Config{
		Seed: 1, Users: 2_000, Items: 5_000, Categories: 100, Events: n,
		Start: now.Add(-24 * time.Hour), Span: 24 * time.Hour,
	})
	if err != nil {
		return 0, fmt.Errorf("demo: %w", err)
	}
	total, err := ingestGenerated(ctx, eng, gen, 10_000)
	if err != nil && ctx.Err() == nil {
		return 0, fmt.Errorf("demo: %w", err)
	}
	return total, nil
}

// loadFiles ingests files in event-time order and returns how many events
// were accepted and how many rejected (kept as dead letters when they were
// late or future; undecodable lines are only counted).
func loadFiles(ctx context.Context, eng *datadir.Dir, files []string, format string) (accepted, rejected int, err error) {
	batch := make([]*recsysv1.Event, 0, 10_000)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		res, err := eng.Updater.Ingest(ctx, batch, nil)
		if err != nil {
			return err
		}
		accepted += res.Accepted
		rejected += len(res.Rejected)
		batch = batch[:0]
		return nil
	}
	for _, f := range files {
		ff := format
		if ff == "auto" {
			ff = "taobao"
			if strings.HasSuffix(strings.TrimSuffix(f, ".gz"), ".jsonl") || strings.HasSuffix(strings.TrimSuffix(f, ".gz"), ".json") {
				ff = "jsonl"
			}
		}
		err := eventfile.ReadAll([]string{f}, ff, true, func(ev *recsysv1.Event, ferr *updater.FieldError) error {
			if ferr != nil {
				rejected++
				return nil
			}
			batch = append(batch, ev)
			if len(batch) == cap(batch) {
				return flush()
			}
			return nil
		})
		if err != nil {
			return accepted, rejected, fmt.Errorf("load %s: %w", f, err)
		}
	}
	return accepted, rejected, flush()
}

// ingestGenerated ingests every event of gen through the updater in
// batches and returns how many were accepted.
func ingestGenerated(ctx context.Context, eng *datadir.Dir, gen *synth.Generator, batch int) (int, error) {
	total := 0
	evs := make([]*recsysv1.Event, 0, batch)
	flush := func() error {
		res, err := eng.Updater.Ingest(ctx, evs, nil)
		if err != nil {
			return err
		}
		if len(res.Rejected) > 0 {
			return fmt.Errorf("generated event rejected: %s", res.Rejected[0].Reason)
		}
		total += res.Accepted
		evs = evs[:0]
		return nil
	}
	for {
		ev, ok := gen.Next()
		if !ok {
			break
		}
		evs = append(evs, &recsysv1.Event{UserId: ev.UserID, ItemId: ev.ItemID, CategoryId: ev.CategoryID, Behavior: ev.Behavior, Ts: ev.TS})
		if len(evs) == batch {
			if err := flush(); err != nil {
				return total, err
			}
		}
	}
	if len(evs) > 0 {
		if err := flush(); err != nil {
			return total, err
		}
	}
	return total, nil
}

// snapshotBytes is --flight.snapshot-mb for serving.FlightServer: 0 turns
// the snapshots off (negative there).
func snapshotBytes(mb int) int64 {
	if mb == 0 {
		return -1
	}
	return int64(mb) << 20
}
