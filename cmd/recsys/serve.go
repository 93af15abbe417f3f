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
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/serving"
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
	ing := ingestConfig{cfg.Ingest.AllowedLateness, cfg.Ingest.MaxFutureSkew, uint64(cfg.Ingest.MinFreeBytes)}
	kafkaSrc, err := newKafkaSource(&cfg.Kafka, ing) // nil without --kafka.brokers
	if err != nil {
		return err
	}
	defer kafkaSrc.Close()
	eng, err := openEngine(cfg.Data.Dir, cfg.Store, ing, logger, reg, kafkaSrc.tune)
	if err != nil {
		return err
	}
	defer func() {
		if err := eng.Close(); err != nil {
			logger.Error("close data dir", "err", err)
		}
	}()
	metrics := serving.NewMetrics(reg, eng.store, eng.upd)
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
	srv := serving.New(eng.store, eng.upd, sopts)
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
	flightSrv := serving.NewFlightServer(eng.store, nil).WithUpdater(eng.upd).WithBackups(backups).GRPCServer(append(creds, guard("flight").ServerOptions()...)...)

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
		g.Go(func() error { return eng.upd.Run(updCtx) })
	}
	g.Go(func() error { return ignoreClosed(httpSrv.Serve(httpL)) })
	g.Go(func() error { return grpcSrv.Serve(grpcL) })
	g.Go(func() error { return flightSrv.Serve(flightL) })
	if cfg.Demo.Enabled {
		if eng.log.End() == 0 {
			g.Go(func() error { return loadDemo(gctx, eng, cfg.Demo.Events, logger) })
		} else {
			logger.Info("demo: the event log is not empty, not loading the demo stream")
		}
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
		if derr := eng.upd.WaitApplied(dctx, eng.log.End()); derr != nil {
			logger.Warn("updater did not catch up before shutdown; the rest is applied at the next start", "err", derr)
		}
		stopUpd()
		if errors.Is(err, context.DeadlineExceeded) {
			logger.Warn("requests still in flight at the shutdown deadline were cut off")
			err = nil
		}
		return ignoreClosed(err)
	})

	scheme, fscheme := "http", "grpc"
	if tlsCfg != nil {
		scheme, fscheme = "https", "grpc+tls"
	}
	fmt.Printf("recsys serving (data dir %s)\n  REST:   %s://%s  (OpenAPI at /openapi.json, metrics at /metrics)\n  gRPC:   %s\n  Flight: %s://%s\n",
		cfg.Data.Dir, scheme, hostPort(httpL.Addr()), hostPort(grpcL.Addr()), fscheme, hostPort(flightL.Addr()))
	logger.Info("listening", "http", httpL.Addr().String(), "grpc", grpcL.Addr().String(), "flight", flightL.Addr().String(),
		"applied_offset", eng.store.AppliedOffset(), "log_end", eng.log.End())
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

// loadDemo ingests a synthetic stream of n events whose event times cover
// the last 24 hours.
func loadDemo(ctx context.Context, eng *engine, n int, logger *slog.Logger) error {
	now := time.Now()
	gen, err := synth.New(synth.Config{
		Seed: 1, Users: 2_000, Items: 5_000, Categories: 100, Events: n,
		Start: now.Add(-24 * time.Hour), Span: 24 * time.Hour,
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	start := time.Now()
	total, err := ingestGenerated(ctx, eng, gen, 10_000)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("demo: %w", err)
	}
	logger.Info("demo stream loaded", "events", total, "took", time.Since(start).Round(time.Millisecond),
		"try", "curl localhost:8080/v1/users/u1/features")
	return nil
}

// ingestGenerated ingests every event of gen through the updater in
// batches and returns how many were accepted.
func ingestGenerated(ctx context.Context, eng *engine, gen *synth.Generator, batch int) (int, error) {
	total := 0
	evs := make([]*recsysv1.Event, 0, batch)
	flush := func() error {
		res, err := eng.upd.Ingest(ctx, evs, nil)
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
