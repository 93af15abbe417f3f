package serving

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// Build says which code a binary was built from. It is read from the
// module information the go command embeds (runtime/debug.ReadBuildInfo):
// the main module's version (a tag, or a pseudo-version such as
// v0.0.0-20261201135708-c669af1eae1c, "+dirty" when the tree had changes)
// and the VCS stamp. Builds without VCS stamping (-buildvcs=false, a
// source tree outside git) have the version "(devel)" and no revision.
type Build struct {
	Version   string // main module version; "(devel)" when unknown
	Revision  string // VCS commit, with "-modified" when the tree had changes; "unknown" without a stamp
	Modified  bool   // the working tree had uncommitted changes
	Time      string // commit time (RFC 3339); empty without a stamp
	GoVersion string // the Go toolchain, such as go1.26.8
}

// BuildInfo returns the build of the running binary (the same for every
// call): the `recsys_build_info` metric, the OpenAPI document's version
// and `recsys version` report it.
var BuildInfo = sync.OnceValue(func() Build {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Build{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	}
	return buildFrom(bi)
})

func buildFrom(bi *debug.BuildInfo) Build {
	b := Build{Version: bi.Main.Version, Revision: "unknown", GoVersion: bi.GoVersion}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	if b.GoVersion == "" {
		b.GoVersion = runtime.Version()
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		case "vcs.time":
			b.Time = s.Value
		}
	}
	if b.Modified && b.Revision != "unknown" {
		b.Revision += "-modified"
	}
	return b
}
