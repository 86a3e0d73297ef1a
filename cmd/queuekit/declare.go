package main

import (
	"context"
	"fmt"
	"strings"
)

// listFlag collects a repeatable flag, each value possibly a
// comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// runDeclare creates a topic and its groups: a group receives every message
// published after it was declared, and publishing to a topic without a
// group fails, on every broker.
func runDeclare(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "declare")
	topic := fs.String("topic", "", "topic to create (required)")
	var groups listFlag
	fs.Var(&groups, "group", "consumer `group` to create on the topic (repeatable, or comma-separated; at least one)")
	if err := parse(fs, args, "topic"); err != nil {
		return err
	}
	if len(groups) == 0 {
		return fmt.Errorf("%w: declare needs at least one -group: a topic without a group refuses publishes", errUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: declare takes no arguments (got %q); repeat -group for several groups", errUsage, fs.Args())
	}
	warnEphemeral(e, *url, "the groups vanish when declare exits")
	b, closeBroker, err := open(ctx, *url)
	if err != nil {
		return err
	}
	defer closeBroker()
	if err := b.Declare(ctx, *topic, groups...); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "declared topic %s with group(s) %s\n", *topic, strings.Join(groups, ", "))
	return nil
}
