package serving

import (
	"io"
	"net/http/httptest"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestBuildFrom(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   debug.BuildInfo
		want Build
	}{
		{"no stamp", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			Build{Version: "(devel)", Revision: "unknown", GoVersion: "go1.26.8"}},
		{"clean", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261201135708-c669af1eae1c"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "c669af1eae1c54d7fd3618761da3d3d08639e98d"},
			{Key: "vcs.time", Value: "2026-12-01T13:57:08Z"}, {Key: "vcs.modified", Value: "false"}}},
			Build{Version: "v0.0.0-20261201135708-c669af1eae1c", Revision: "c669af1eae1c54d7fd3618761da3d3d08639e98d", Time: "2026-12-01T13:57:08Z", GoVersion: "go1.26.8"}},
		{"modified", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3+dirty"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}},
			Build{Version: "v1.2.3+dirty", Revision: "abc-modified", Modified: true, GoVersion: "go1.26.8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := buildFrom(&tc.in); got != tc.want {
				t.Errorf("buildFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
	if b := BuildInfo(); b.Version == "" || b.Revision == "" || !strings.HasPrefix(b.GoVersion, "go") {
		t.Errorf("BuildInfo() = %+v: empty fields", b)
	}
}

func TestMetricsBuildInfo(t *testing.T) {
	e := newEnv(t)
	m := NewMetrics(prometheus.NewRegistry(), e.store, e.models, e.upd)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	b := BuildInfo()
	want := `recsys_build_info{goversion="` + b.GoVersion + `",revision="` + b.Revision + `",version="` + b.Version + `"} 1`
	if !strings.Contains(string(body), want+"\n") {
		t.Errorf("/metrics lacks %s", want)
	}
}
