package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// runLag prints what a group has yet to finish on a topic, from
// broker.Broker.Backlog: Kafka's lag per partition (everything the topic
// holds for a group that never committed), a queue's ready, in-flight and
// delayed messages.
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
	bl, err := b.Backlog(ctx, *topic, *group)
	if errors.Is(err, broker.ErrNoGroup) || broker.KindOf(err) == semantics.NotFound {
		return &hinted{err: err, msg: fmt.Sprintf("%v (declare it with queuekit declare -topic %s -group %s, or start its consumers)", err, *topic, *group)}
	}
	if broker.KindOf(err) == semantics.Unsupported {
		return &hinted{err: err, msg: fmt.Sprintf("queuekit: lag: unsupported: the %s adapter cannot tell a group's backlog", scheme(*url))}
	}
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

// scheme returns rawURL's scheme, such as "kafka://".
func scheme(rawURL string) string {
	s, _, _ := strings.Cut(rawURL, "://")
	return s + "://"
}
