package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

func runLag(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "lag")
	topic := fs.String("topic", "", "topic (required)")
	group := fs.String("group", "default", "consumer group")
	if err := parse(fs, args, "topic"); err != nil {
		return err
	}
	b, closeBroker, err := open(ctx, *url)
	if err != nil {
		return err
	}
	defer closeBroker()
	r, ok := b.(broker.BacklogReporter)
	if !ok {
		return broker.Errorf(semantics.Unsupported, "queuekit: lag", "the %T adapter cannot report a backlog", b)
	}
	bl, err := r.Backlog(ctx, *topic, *group)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "topic\tgroup\tpending\tin flight\tdelayed\tconsumers\n")
	fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", *topic, *group, bl.Pending, known(bl.InFlight), known(bl.Delayed), known(int64(bl.Consumers)))
	if len(bl.Parts) > 0 {
		fmt.Fprintf(tw, "\npartition\tpending\towner\n")
		for _, p := range bl.Parts {
			owner := p.Owner
			if owner == "" {
				owner = "(none)"
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\n", p.Partition, p.Pending, owner)
		}
	}
	return tw.Flush()
}

func known(n int64) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprint(n)
}
