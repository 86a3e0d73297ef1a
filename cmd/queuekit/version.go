package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/queuekit/queuekit/broker"
)

// runVersion prints the module version, the commit the binary was built
// from (when built in a checkout) and the adapters compiled in.
func runVersion(_ context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("queuekit version", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	version, commit := "(unknown)", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
		var rev, when, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = ", with uncommitted changes"
				}
			}
		}
		if rev != "" {
			commit = fmt.Sprintf("commit %s (%s%s)", rev, when, modified)
		}
	}
	fmt.Fprintf(e.stdout, "queuekit %s, %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if commit != "" {
		fmt.Fprintln(e.stdout, commit)
	}
	fmt.Fprintln(e.stdout, "adapters:", strings.Join(broker.Schemes(), ", "))
	return nil
}
