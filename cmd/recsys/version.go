package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildVersion describes this binary from the build information the Go
// toolchain stamps into it: the module version (a pseudo-version from the
// commit when built from a checkout), the commit and whether the tree had
// changes.
func buildVersion() (version, revision string, modified bool) {
	version, revision = "(devel)", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	return
}

func versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the version, commit and Go version of this binary",
		Example: "  recsys version\n  recsys version --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, rev, mod := buildVersion()
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{"version": v, "revision": rev, "modified": mod, "go": runtime.Version(),
					"os": runtime.GOOS, "arch": runtime.GOARCH})
			}
			dirty := ""
			if mod {
				dirty = " (modified)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "recsys %s\ncommit %s%s\n%s %s/%s\n", v, rev, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
