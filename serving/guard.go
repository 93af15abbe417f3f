package serving

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Scope is what a token may do. Scopes are ordered: admin includes write,
// write includes read.
type Scope int

const (
	ScopeNone Scope = iota
	ScopeRead
	ScopeWrite
	ScopeAdmin
)

func (s Scope) String() string {
	return [...]string{"none", "read", "write", "admin"}[s]
}

func parseScope(s string) (Scope, bool) {
	switch s {
	case "read":
		return ScopeRead, true
	case "write":
		return ScopeWrite, true
	case "admin":
		return ScopeAdmin, true
	}
	return ScopeNone, false
}

// Tokens maps bearer tokens to their scope. A nil Tokens lets every call
// through (the server then listens on loopback only).
type Tokens map[string]Scope

// LoadTokens reads a token file: one "TOKEN SCOPE" pair a line, scopes
// read, write or admin; blank lines and lines starting with # are skipped.
// A token listed twice gets its highest scope.
func LoadTokens(path string) (Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth.token-file: %w", err)
	}
	defer f.Close()
	t := Tokens{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("auth.token-file %s:%d: want TOKEN SCOPE", path, line)
		}
		scope, ok := parseScope(fields[1])
		if !ok {
			return nil, fmt.Errorf("auth.token-file %s:%d: scope %q is not read, write or admin", path, line, fields[1])
		}
		if len(fields[0]) < 16 {
			return nil, fmt.Errorf("auth.token-file %s:%d: token shorter than 16 characters", path, line)
		}
		t[fields[0]] = max(t[fields[0]], scope)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth.token-file: %w", err)
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("auth.token-file %s: no tokens", path)
	}
	return t, nil
}

// check returns the scope the Authorization value grants (ScopeAdmin when
// auth is off) and nil when it covers need, else an UNAUTHENTICATED or
// PERMISSION_DENIED status.
func (t Tokens) check(authorization string, need Scope) (Scope, error) {
	if t == nil {
		return ScopeAdmin, nil
	}
	have := t.scopeOf(authorization)
	if need == ScopeNone {
		return have, nil
	}
	if have == ScopeNone {
		return have, status.Error(codes.Unauthenticated, "authorization: a valid bearer token is required")
	}
	if have < need {
		return have, status.Errorf(codes.PermissionDenied, "authorization: this call needs scope %s, the token has %s", need, have)
	}
	return have, nil
}

func (t Tokens) scopeOf(authorization string) Scope {
	scheme, token, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return ScopeNone
	}
	return t[strings.TrimSpace(token)]
}

type scopeKey struct{}

// ScopeFrom returns the scope of the caller of a guarded request
// (ScopeAdmin when auth is off; ScopeNone outside a guard).
func ScopeFrom(ctx context.Context) Scope {
	s, _ := ctx.Value(scopeKey{}).(Scope)
	return s
}

// requireScope fails with PERMISSION_DENIED unless the caller has need.
func requireScope(ctx context.Context, need Scope, what string) error {
	if have := ScopeFrom(ctx); have < need {
		return status.Errorf(codes.PermissionDenied, "authorization: %s needs scope %s, the token has %s", what, need, have)
	}
	return nil
}

// methodScope is the scope each RPC needs; unknown methods need admin.
func methodScope(fullMethod string) Scope {
	switch {
	case strings.HasPrefix(fullMethod, "/grpc.health."), strings.HasPrefix(fullMethod, "/grpc.reflection."):
		return ScopeNone
	case fullMethod == "/recsys.v1.EventService/Ingest", fullMethod == "/arrow.flight.protocol.FlightService/DoPut":
		return ScopeWrite
	case fullMethod == "/recsys.v1.AdminService/ListDeadLetters", fullMethod == "/arrow.flight.protocol.FlightService/DoAction":
		return ScopeAdmin
	case strings.HasPrefix(fullMethod, "/recsys.v1."), strings.HasPrefix(fullMethod, "/arrow.flight.protocol.FlightService/"):
		return ScopeRead
	}
	return ScopeAdmin
}

// Guard protects one listener: authentication, a concurrency limit that
// refuses at once instead of queueing, and a deadline per request.
type Guard struct {
	tokens   Tokens
	slots    chan struct{}
	deadline time.Duration
	name     string
	metrics  *Metrics
	// maxBody: REST request bodies are read (up to this many bytes, the
	// rest is left for the handler's own limit to refuse) before a slot
	// is taken, so that slow or stalled uploads never hold one. 0: bodies
	// are read by the handler, inside the slot.
	maxBody int64
}

// WithBodyPrefetch makes the REST middleware read request bodies of up
// to n bytes before taking a concurrency slot.
func (g *Guard) WithBodyPrefetch(n int64) *Guard {
	g.maxBody = n
	return g
}

// NewGuard returns a guard allowing maxInFlight concurrent requests (0:
// unlimited), each with the given deadline (0: none).
func NewGuard(name string, tokens Tokens, maxInFlight int, deadline time.Duration, m *Metrics) *Guard {
	g := &Guard{tokens: tokens, deadline: deadline, name: name, metrics: m}
	if maxInFlight > 0 {
		g.slots = make(chan struct{}, maxInFlight)
	}
	return g
}

// acquire takes a slot or fails with RESOURCE_EXHAUSTED at once.
func (g *Guard) acquire() (func(), error) {
	if g.slots == nil {
		return func() {}, nil
	}
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	default:
		g.metrics.rejected(g.name)
		return nil, status.Errorf(codes.ResourceExhausted, "%s: too many requests in flight (limit %d); retry later", g.name, cap(g.slots))
	}
}

func authorization(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		return v[0]
	}
	return ""
}

// UnaryInterceptor applies the guard to unary RPCs.
func (g *Guard) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := g.unary(ctx, req, info, handler)
		g.metrics.observe(g.name, info.FullMethod, status.Code(err).String(), time.Since(start))
		return resp, err
	}
}

func (g *Guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	decErr, undecodable := takeDecodeError(req)
	need := methodScope(info.FullMethod)
	scope, err := g.tokens.check(authorization(ctx), need)
	if err != nil {
		return nil, err
	}
	if undecodable {
		return nil, decodeStatus(decErr)
	}
	ctx = context.WithValue(ctx, scopeKey{}, scope)
	if need != ScopeNone { // health and reflection are never refused for load
		release, err := g.acquire()
		if err != nil {
			return nil, err
		}
		defer release()
	}
	if g.deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.deadline)
		defer cancel()
	}
	return handler(ctx, req)
}

// StreamInterceptor applies the guard to streaming RPCs (Flight). Streams
// get no deadline: a bulk read may take long; clients cancel.
func (g *Guard) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := g.stream(srv, ss, info, handler)
		g.metrics.observe(g.name, info.FullMethod, status.Code(err).String(), time.Since(start))
		return err
	}
}

func (g *Guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	need := methodScope(info.FullMethod)
	scope, err := g.tokens.check(authorization(ss.Context()), need)
	if err != nil {
		return err
	}
	if need != ScopeNone {
		release, err := g.acquire()
		if err != nil {
			return err
		}
		defer release()
	}
	return handler(srv, &scopedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), scopeKey{}, scope)})
}

// scopedStream carries the caller's scope in its context, and fails a
// received message that did not decode with INVALID_ARGUMENT.
type scopedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *scopedStream) Context() context.Context { return s.ctx }

func (s *scopedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err, bad := takeDecodeError(m); bad {
		return decodeStatus(err)
	}
	return nil
}

// ServerOptions are the interceptors of the guard as gRPC server options.
func (g *Guard) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{codecOption(), grpc.ChainUnaryInterceptor(g.UnaryInterceptor()), grpc.ChainStreamInterceptor(g.StreamInterceptor())}
}

// httpScope is the scope a REST request needs.
func httpScope(r *http.Request) Scope {
	switch {
	case r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics" || r.URL.Path == "/openapi.json":
		return ScopeNone
	case r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, "/ui/"):
		return ScopeNone // the console's static files: no data (its API calls need a token)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/events":
		return ScopeWrite
	case strings.HasPrefix(r.URL.Path, "/v1/dead-letters"):
		return ScopeAdmin
	}
	return ScopeRead
}

// HTTPMiddleware applies the guard to the REST listener; errors use the
// same JSON shape as grpc-gateway's.
func (g *Guard) HTTPMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() { g.metrics.observe(g.name, routeOf(r), strconvItoa(rec.code), time.Since(start)) }()
		need := httpScope(r)
		scope, err := g.tokens.check(r.Header.Get("Authorization"), need)
		if err != nil {
			writeStatus(rec, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), scopeKey{}, scope))
		if g.maxBody > 0 && r.Body != nil && r.Body != http.NoBody {
			// The body arrives before the request counts as in flight: a
			// client that sends it slowly (or never finishes) holds only its
			// own connection, until the server's read timeout ends it.
			body, err := io.ReadAll(io.LimitReader(r.Body, g.maxBody+1))
			if err != nil {
				writeError(rec, http.StatusRequestTimeout, codes.DeadlineExceeded, "body: not received in time: "+err.Error())
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if need != ScopeNone { // health, metrics and the spec are never refused for load
			release, err := g.acquire()
			if err != nil {
				writeStatus(rec, err)
				return
			}
			defer release()
		}
		if g.deadline > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), g.deadline)
			defer cancel()
			r = r.WithContext(ctx)
		}
		next.ServeHTTP(rec, r)
	})
}

// writeStatus writes a status error as the gateway would.
func writeStatus(w http.ResponseWriter, err error) {
	st, _ := status.FromError(err)
	code := http.StatusInternalServerError
	switch st.Code() {
	case codes.Unauthenticated:
		code = http.StatusUnauthorized
		w.Header().Set("WWW-Authenticate", `Bearer realm="recsys"`)
	case codes.PermissionDenied:
		code = http.StatusForbidden
	case codes.ResourceExhausted:
		code = http.StatusTooManyRequests
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, code, st.Code(), st.Message())
}

// writeError writes an error body in the gateway's shape with the given
// HTTP status.
func writeError(w http.ResponseWriter, httpCode int, code codes.Code, msg string) {
	writeJSON(w, httpCode, map[string]any{"code": int(code), "message": msg, "details": []any{}})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}
