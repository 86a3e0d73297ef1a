package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/semantics"
)

// defaultRedriveGroup is the group redrive reads a dead-letter topic as when
// -group does not name one and the broker does not say where its dead
// letters are.
const defaultRedriveGroup = "queuekit-redrive"

func runRedrive(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "redrive")
	topic := fs.String("topic", "", "the topic whose dead letters to move back (its dead-letter topic is TOPIC.dlq), or a .dlq topic itself (required)")
	group := fs.String("group", "", "the `group` on the dead-letter topic that holds the dead letters (default: the queue RabbitMQ dead-lettered them to, else "+defaultRedriveGroup+")")
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
	g, err := redriveGroup(ctx, e, b, dead, *group)
	if err != nil || g == "" {
		return err
	}
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: dead, Group: g})
	if err != nil {
		return err
	}
	defer closeSubscriber(ctx, e, "redrive", sub)
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer pub.Close(context.WithoutCancel(ctx))

	line := newProgressLine(e.stderr)
	opts := dlq.RedriveOptions{
		Limit:         *limit,
		Idle:          *idle,
		ProgressEvery: 1, // each message; progressLine decides when to print
		Progress:      line.report,
	}
	if *to != "" {
		opts.Topic = func(*broker.Message) string { return *to }
	}
	p, err := dlq.Redrive(ctx, sub, pub, opts)
	fmt.Fprintf(e.stdout, "moved %d dead letters from %s (group %s) in %v%s\n", p.Moved, dead, g, p.Elapsed.Round(time.Millisecond), rate(p.Moved, p.Elapsed))
	if p.Skipped > 0 {
		fmt.Fprintf(e.stdout, "skipped %d\n", p.Skipped)
	}
	return err
}

// redriveGroup returns the group to read dead from: group when set, else
// the queue where RabbitMQ dead-lettered the topic's messages natively,
// else defaultRedriveGroup. It refuses (an error, so a non-zero exit) a
// group that does not exist where the broker can tell, since a new group
// receives only dead letters to come and redrive would move none; and when
// RabbitMQ holds dead letters in several queues (each a copy), it names
// them. An empty group and a nil error mean there is nothing to redrive
// (said on stdout).
func redriveGroup(ctx context.Context, e *env, b *broker.Broker, dead, group string) (string, error) {
	original := strings.TrimSuffix(dead, dlq.Suffix)
	var rb *rabbitmq.Broker
	if b.As(&rb) {
		qs, err := rb.DeadLetterQueues(ctx, original)
		if err != nil {
			return "", err
		}
		var full []rabbitmq.QueueInfo
		for _, q := range qs {
			if q.Messages > 0 && q.Topic == dead {
				full = append(full, q)
			}
		}
		switch {
		case group != "":
			for _, q := range full {
				if q.Group != group {
					fmt.Fprintf(e.stderr, "queuekit: note: RabbitMQ also holds %d dead letters of %s in queue %s (-group %s)\n", q.Messages, original, q.Queue, q.Group)
				}
			}
		case len(full) == 1:
			fmt.Fprintf(e.stderr, "queuekit: redrive: %d dead letters wait in queue %s, where RabbitMQ dead-lettered them: reading it as group %s\n", full[0].Messages, full[0].Queue, full[0].Group)
			return full[0].Group, nil
		case len(full) > 1:
			var where []string
			for _, q := range full {
				where = append(where, fmt.Sprintf("%s (%d, -group %s)", q.Queue, q.Messages, q.Group))
			}
			return "", fmt.Errorf("dead letters of %s wait in %d queues, each with its own copy of every dead letter: %s; "+
				"redrive one with -group, then purge or delete the others", original, len(full), strings.Join(where, ", "))
		case len(qs) > 0:
			fmt.Fprintf(e.stdout, "no dead letters: RabbitMQ's dead-letter queues of %s are empty (%s)\n", original, queueNames(qs))
			return "", nil
		}
	}
	if group == "" {
		group = defaultRedriveGroup
	}
	_, err := b.Backlog(ctx, dead, group)
	switch {
	case broker.KindOf(err) == semantics.NotFound:
		return "", broker.Errorf(semantics.NotFound, "queuekit: redrive",
			"%s has no group %s, and a new group receives only dead letters published from now on, so redrive would move none: "+
				"name the group that holds them with -group (the one declared on %s before the messages were dead-lettered)", dead, group, dead)
	case err != nil && broker.KindOf(err) != semantics.Unsupported:
		return "", err
	}
	return group, nil
}

func queueNames(qs []rabbitmq.QueueInfo) string {
	names := make([]string, len(qs))
	for i, q := range qs {
		names[i] = q.Queue
	}
	return strings.Join(names, ", ")
}

// rate formats n per d as " (123/s)", or "" when too short to say.
func rate(n int, d time.Duration) string {
	if n == 0 || d < 10*time.Millisecond {
		return ""
	}
	return fmt.Sprintf(" (%.0f/s)", float64(n)/d.Seconds())
}

// progressLine shows a redrive's progress: on a terminal, one line
// rewritten in place a few times a second; elsewhere (a log), a line every
// progressLogEvery.
type progressLine struct {
	w       io.Writer
	tty     bool
	every   time.Duration
	last    time.Time
	printed bool
	now     func() time.Time
}

const (
	progressTTYEvery = 200 * time.Millisecond
	progressLogEvery = 5 * time.Second
)

func newProgressLine(w io.Writer) *progressLine {
	l := &progressLine{w: w, tty: isTerminal(w), every: progressLogEvery, now: time.Now}
	if l.tty {
		l.every = progressTTYEvery
	}
	l.last = l.now()
	return l
}

func (l *progressLine) report(p dlq.Progress) {
	now := l.now()
	if !p.Done && now.Sub(l.last) < l.every {
		return
	}
	l.last = now
	text := fmt.Sprintf("redrive: moved %d%s, skipped %d, %v", p.Moved, rate(p.Moved, p.Elapsed), p.Skipped, p.Elapsed.Round(time.Second))
	switch {
	case l.tty && p.Done:
		if l.printed {
			fmt.Fprint(l.w, "\r\033[K") // the summary on stdout says the rest
		}
	case l.tty:
		fmt.Fprintf(l.w, "\r\033[K%s", text)
		l.printed = true
	case !p.Done:
		fmt.Fprintln(l.w, text)
		l.printed = true
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
