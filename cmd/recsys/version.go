package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/streamrec/recsys/serving"
)

func versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the version, commit and Go version of this binary",
		Example: "  recsys version\n  recsys version --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := serving.BuildInfo()
			rev := strings.TrimSuffix(b.Revision, "-modified")
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{"version": b.Version, "revision": rev, "modified": b.Modified,
					"time": b.Time, "go": b.GoVersion, "os": runtime.GOOS, "arch": runtime.GOARCH})
			}
			dirty := ""
			if b.Modified {
				dirty = " (modified)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "recsys %s\ncommit %s%s\n%s %s/%s\n", b.Version, rev, dirty, b.GoVersion, runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
