package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dlq"
)

func runRedrive(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "redrive")
	topic := fs.String("topic", "", "the topic whose dead letters to move back (its dead-letter topic is TOPIC.dlq), or a .dlq topic itself (required)")
	group := fs.String("group", "queuekit-redrive", "consumer group on the dead-letter topic")
	limit := fs.Int("n", 0, "move at most this many (0: all)")
	to := fs.String("to", "", "publish to this topic instead of each message's original topic")
	idle := fs.Duration("idle", 2*time.Second, "stop when no dead letter arrives for this long")
	if err := parse(fs, args, "topic"); err != nil {
		return err
	}
	dead := *topic
	if !strings.HasSuffix(dead, dlq.Suffix) {
		dead = dlq.Topic(dead)
	}
	b, closeBroker, err := open(ctx, *url)
	if err != nil {
		return err
	}
	defer closeBroker()
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: dead, Group: *group})
	if err != nil {
		return err
	}
	defer sub.Close(context.WithoutCancel(ctx))
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer pub.Close(context.WithoutCancel(ctx))

	opts := dlq.RedriveOptions{
		Limit: *limit,
		Idle:  *idle,
		Progress: func(p dlq.Progress) {
			fmt.Fprintf(e.stderr, "redrive: moved %d, skipped %d, %v\n", p.Moved, p.Skipped, p.Elapsed.Round(time.Millisecond))
		},
	}
	if *to != "" {
		opts.Topic = func(*broker.Message) string { return *to }
	}
	p, err := dlq.Redrive(ctx, sub, pub, opts)
	fmt.Fprintf(e.stdout, "moved %d dead letters from %s\n", p.Moved, dead)
	return err
}
