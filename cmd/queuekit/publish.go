package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/queuekit/queuekit/broker"
)

// headerFlags collects repeated -H key=value flags.
type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }

func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("header %q is not key=value", v)
	}
	h[k] = val
	return nil
}

func runPublish(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "publish")
	topic := fs.String("topic", "", "topic to publish to (required)")
	key := fs.String("key", "", "message key (partitioning and ordering)")
	id := fs.String("id", "", "message ID (default: a random UUID per message)")
	lines := fs.Bool("lines", false, "publish each line of stdin as a message")
	headers := headerFlags{}
	fs.Var(headers, "H", "header key=value (repeatable)")
	if err := parse(fs, args, "topic"); err != nil {
		return err
	}
	var payloads [][]byte
	switch {
	case fs.NArg() > 0 && *lines:
		return fmt.Errorf("%w: give a payload argument or -lines, not both", errUsage)
	case fs.NArg() > 0:
		payloads = [][]byte{[]byte(strings.Join(fs.Args(), " "))}
	case *lines:
		sc := bufio.NewScanner(e.stdin)
		sc.Buffer(make([]byte, 64*1024), 64<<20)
		for sc.Scan() {
			payloads = append(payloads, append([]byte(nil), sc.Bytes()...))
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
	default:
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		payloads = [][]byte{b}
	}
	if *id != "" && len(payloads) > 1 {
		return fmt.Errorf("%w: -id names one message, but -lines read %d", errUsage, len(payloads))
	}

	warnEphemeral(e, *url, "what publish sends vanishes when it exits")
	b, closeBroker, err := open(ctx, *url)
	if err != nil {
		return err
	}
	defer closeBroker()
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	msgs := make([]*broker.Message, len(payloads))
	for i, p := range payloads {
		msgs[i] = &broker.Message{ID: *id, Key: *key, Payload: p, Headers: headers}
	}
	err = pub.Publish(ctx, *topic, msgs...)
	if cerr := pub.Close(context.WithoutCancel(ctx)); err == nil {
		err = cerr
	}
	if errors.Is(err, broker.ErrNoGroup) {
		return &hinted{err: err, msg: fmt.Sprintf("queuekit: publish: topic %s has no group: declare one first (queuekit declare -topic %s -group NAME) or start a consumer; a group receives what is published after it exists", *topic, *topic)}
	}
	if err != nil {
		return err
	}
	for _, m := range msgs {
		fmt.Fprintln(e.stdout, m.ID)
	}
	return nil
}
