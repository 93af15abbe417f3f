package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	recsysv1 "github.com/streamrec/recsys/proto/recsys/v1"
	"github.com/streamrec/recsys/serving/ui"
	"github.com/streamrec/recsys/updater"
)

var jsonMarshaler = fastJSON{&runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
	UnmarshalOptions: protojson.UnmarshalOptions{},
}}

// HTTPHandler returns the REST front door: grpc-gateway routes over s, the
// ingest endpoint, /openapi.json, /metrics, /healthz, /readyz and the web
// console under /ui/.
func (s *Server) HTTPHandler(ctx context.Context) (http.Handler, error) {
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, jsonMarshaler),
		runtime.SetQueryParameterParser(strictQuery{}),
	)
	for _, reg := range []func(context.Context, *runtime.ServeMux) error{
		func(ctx context.Context, m *runtime.ServeMux) error {
			return recsysv1.RegisterEventServiceHandlerServer(ctx, m, s)
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return recsysv1.RegisterFeatureServiceHandlerServer(ctx, m, s)
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return recsysv1.RegisterRecommendServiceHandlerServer(ctx, m, s)
		},
		func(ctx context.Context, m *runtime.ServeMux) error {
			return recsysv1.RegisterAdminServiceHandlerServer(ctx, m, s)
		},
	} {
		if err := reg(ctx, gw); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	for _, rt := range s.routes(gw) {
		mux.Handle(rt.pattern, rt.handler)
	}
	// The web console: static files, outside the API (and its OpenAPI
	// document); open like /openapi.json, its data calls carry the token.
	mux.Handle("GET "+ui.Prefix, ui.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, codes.NotFound, fmt.Sprintf("path %s: no such file of the web console", truncate(r.URL.Path, 200)))
	})))
	mux.Handle("GET /ui", ui.Redirect())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
		if _, pattern := mux.Handler(r); pattern == "" {
			routingError(mux, w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}

// route is a REST route: a net/http pattern with its method.
type route struct {
	pattern string
	handler http.Handler
}

// routes are every REST route (the OpenAPI document describes each; a
// test checks it).
func (s *Server) routes(gw *runtime.ServeMux) []route {
	var routes []route
	addHandler := func(pattern string, h http.Handler) { routes = append(routes, route{pattern, h}) }
	add := func(pattern string, h http.HandlerFunc) { addHandler(pattern, h) }
	add("POST /v1/events", func(w http.ResponseWriter, r *http.Request) {
		if msg := jsonContentType(r); msg != "" {
			writeError(w, http.StatusUnsupportedMediaType, codes.InvalidArgument, msg)
			return
		}
		resp, err := s.handleIngest(r)
		if err != nil {
			if isDiskFull(err) {
				writeError(w, http.StatusInsufficientStorage, codes.ResourceExhausted, status.Convert(err).Message())
				return
			}
			runtime.HTTPError(r.Context(), gw, jsonMarshaler, w, r, err)
			return
		}
		b, err := jsonMarshaler.Marshal(resp)
		if err != nil {
			runtime.HTTPError(r.Context(), gw, jsonMarshaler, w, r, toStatus(err))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	add("POST /v1/features:get", s.featuresGet(gw))
	// Routes with an entity id in the path go through net/http's mux, which
	// matches escaped segments, so that an id containing '/' (sent as %2F)
	// is one path parameter. grpc-gateway splits such paths (and its
	// unescaping modes are ambiguous for ids containing "%2F" literally).
	add("GET /v1/users/{user_id}/features", pathRoute(gw, "user_id",
		func(r *recsysv1.GetUserFeaturesRequest, id string) { r.UserId = id }, s.GetUserFeatures))
	add("GET /v1/items/{item_id}/features", pathRoute(gw, "item_id",
		func(r *recsysv1.GetItemFeaturesRequest, id string) { r.ItemId = id }, s.GetItemFeatures))
	add("GET /v1/users/{user_id}/recommendations", pathRoute(gw, "user_id",
		func(r *recsysv1.RecommendRequest, id string) { r.UserId = id }, s.Recommend))
	add("GET /v1/users/{user_id}/similar", pathRoute(gw, "user_id",
		func(r *recsysv1.SimilarUsersRequest, id string) { r.UserId = id }, s.SimilarUsers))
	add("GET /v1/users/{user_id}/history", pathRoute(gw, "user_id",
		func(r *recsysv1.GetUserHistoryRequest, id string) { r.UserId = id }, s.GetUserHistory))
	add("GET /v1/items/{item_id}/similar", pathRoute(gw, "item_id",
		func(r *recsysv1.SimilarItemsRequest, id string) { r.ItemId = id }, s.SimilarItems))
	add("GET /openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(servedOpenAPI())
	})
	if s.opts.Metrics != nil {
		addHandler("GET /metrics", s.opts.Metrics.Handler())
	}
	add("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	add("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, detail := s.ready()
		code, st := http.StatusOK, "ready"
		if !ok {
			code, st = http.StatusServiceUnavailable, "not ready"
		}
		writeJSON(w, code, map[string]any{"status": st, "detail": detail})
	})
	// The other gateway routes, each with its method, so that the mux
	// knows every route: a known path asked with another method is 405
	// with an Allow header, not the gateway's 501.
	for _, pattern := range gatewayRoutes {
		addHandler(pattern, gw)
	}
	return routes
}

// servedOpenAPI is the OpenAPI document as served: the generated one with
// the build's version as info.version (when the build has one).
var servedOpenAPI = sync.OnceValue(func() []byte { return withVersion(recsysv1.OpenAPI, BuildInfo().Version) })

func withVersion(doc []byte, version string) []byte {
	if version == "" || version == "(devel)" {
		return doc
	}
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return doc
	}
	info, ok := m["info"].(map[string]any)
	if !ok {
		return doc
	}
	info["version"] = version
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return doc
	}
	return b.Bytes()
}

// gatewayRoutes are the routes of recsys_http.yaml that the generated
// gateway serves as it is (the others have handlers of their own above).
var gatewayRoutes = []string{
	"GET /v1/feature-views",
	"GET /v1/items/popular",
	"GET /v1/models",
	"GET /v1/dead-letters",
	"GET /v1/stats",
}

// routingError answers a request that matches no route in the project's
// JSON error shape: 405 with the mux's Allow header when the path has
// routes for other methods, else 404.
func routingError(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	probe := &headerRecorder{header: http.Header{}}
	mux.ServeHTTP(probe, r) // the mux's own 404 or 405 (its body is dropped)
	if probe.code == http.StatusMethodNotAllowed {
		allow := probe.header.Get("Allow")
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, codes.Unimplemented,
			fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", truncate(r.Method, 20), truncate(r.URL.Path, 200), allow))
		return
	}
	writeError(w, http.StatusNotFound, codes.NotFound, fmt.Sprintf("path %s: no such route (see /openapi.json)", truncate(r.URL.Path, 200)))
}

// headerRecorder keeps the status and headers of a response, not its body.
type headerRecorder struct {
	header http.Header
	code   int
}

func (h *headerRecorder) Header() http.Header { return h.header }

func (h *headerRecorder) WriteHeader(code int) {
	if h.code == 0 {
		h.code = code
	}
}

func (h *headerRecorder) Write(b []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	return len(b), nil
}

// pathRoute serves a GET whose one path parameter is param, as the
// generated gateway handler would: the other fields come from the query.
func pathRoute[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](gw *runtime.ServeMux, param string, set func(PReq, string), call func(context.Context, PReq) (Resp, error)) http.HandlerFunc {
	filter := utilities.NewDoubleArray([][]string{{param}})
	return func(w http.ResponseWriter, r *http.Request) {
		req := PReq(new(Req))
		set(req, r.PathValue(param))
		if err := runtime.PopulateQueryParameters(req, r.URL.Query(), filter); err != nil {
			runtime.HTTPError(r.Context(), gw, jsonMarshaler, w, r, invalidArg("query", "%v", err))
			return
		}
		resp, err := call(r.Context(), req)
		if err != nil {
			runtime.HTTPError(r.Context(), gw, jsonMarshaler, w, r, err)
			return
		}
		runtime.ForwardResponseMessage(r.Context(), gw, jsonMarshaler, w, r, resp)
	}
}

// featuresGet serves POST /v1/features:get as the generated gateway
// handler does (the same context, request decoding, errors and rows
// answer), except that a columns answer is written straight from the
// store's rows (appendColumns): no protobuf message per value, no
// protojson.
func (s *Server) featuresGet(gw *runtime.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, err := runtime.AnnotateIncomingContext(r.Context(), gw, r, "/recsys.v1.FeatureService/GetFeatures", runtime.WithHTTPPathPattern("/v1/features:get"))
		if err != nil {
			runtime.HTTPError(r.Context(), gw, jsonMarshaler, w, r, err)
			return
		}
		ctx = runtime.NewServerMetadataContext(ctx, runtime.ServerMetadata{})
		var req recsysv1.GetFeaturesRequest
		if err := jsonMarshaler.NewDecoder(r.Body).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			runtime.HTTPError(ctx, gw, jsonMarshaler, w, r, status.Errorf(codes.InvalidArgument, "%v", err))
			return
		}
		rd, columns, err := s.readFeatures(&req)
		if err != nil {
			runtime.HTTPError(ctx, gw, jsonMarshaler, w, r, err)
			return
		}
		if !columns {
			runtime.ForwardResponseMessage(ctx, gw, jsonMarshaler, w, r, rd.rowsProto())
			return
		}
		b := appendColumns(make([]byte, 0, 256+len(rd.rows)*(32+len(rd.idx)*24)), &rd)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	}
}

func (s *Server) handleIngest(r *http.Request) (*recsysv1.IngestResponse, error) {
	id, seq, ordered, err := streamHeaders(r)
	if err != nil {
		return nil, err
	}
	if ordered {
		return s.ingestOrdered(r.Context(), id, seq, func() (*recsysv1.IngestResponse, error) { return s.decodeAndIngest(r) })
	}
	return s.decodeAndIngest(r)
}

func (s *Server) decodeAndIngest(r *http.Request) (*recsysv1.IngestResponse, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, invalidArg("body", "exceeds the limit of %d bytes", tooBig.Limit)
		}
		return nil, invalidArg("body", "cannot read: %v", err)
	}
	events, index, rejected, err := updater.DecodeIngestRequest(body, s.opts.MaxBatch)
	if err != nil {
		var re *updater.RequestError
		if errors.As(err, &re) {
			return nil, invalidArg(re.Field, "%s", re.Reason)
		}
		return nil, toStatus(err)
	}
	return s.ingest(r.Context(), events, index, rejected)
}

// jsonContentType returns why r may not post events ("" when it may): a
// request without a bearer token must say it is JSON. An HTML form or a
// script's "simple" cross-site request can only send text/plain, form or
// multipart bodies without a preflight, so this keeps web pages from
// posting events to a server that runs without tokens.
func jsonContentType(r *http.Request) string {
	if r.Header.Get("Authorization") != "" {
		return ""
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		return ""
	}
	if ct == "" {
		return "content-type: missing; POST /v1/events takes application/json"
	}
	return fmt.Sprintf("content-type: %q is not application/json", truncate(ct, 100))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
