package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker"
)

// tailed is the JSON form of a message that tail prints.
type tailed struct {
	ID          string            `json:"id"`
	Key         string            `json:"key,omitempty"`
	Topic       string            `json:"topic"`
	Attempt     int               `json:"attempt,omitempty"`
	PublishedAt time.Time         `json:"published_at,omitzero"`
	Headers     map[string]string `json:"headers,omitempty"`
	Payload     string            `json:"payload"`
	Encoding    string            `json:"encoding,omitempty"` // "base64" when the payload is not UTF-8
}

func runTail(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "tail")
	topic := fs.String("topic", "", "topic to read (required)")
	group := fs.String("group", "queuekit-tail", "consumer group; tail acks what it prints, so use a group of its own")
	n := fs.Int("n", 0, "stop after this many messages (0: until interrupted)")
	asJSON := fs.Bool("json", false, "print one JSON object per message")
	if err := parse(fs, args, "topic"); err != nil {
		return err
	}
	warnEphemeral(e, *url, "only this process could publish to it")
	b, closeBroker, err := open(ctx, *url)
	if err != nil {
		return err
	}
	defer closeBroker()
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: *topic, Group: *group})
	if err != nil {
		return err
	}
	defer closeSubscriber(ctx, e, "tail", sub)

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var mu sync.Mutex
	count := 0
	enc := json.NewEncoder(e.stdout)
	h := broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if *n > 0 && count >= *n {
			return fmt.Errorf("tail: already printed %d messages", *n) // nacked: left for others
		}
		count++
		if *asJSON {
			t := tailed{ID: m.ID, Key: m.Key, Topic: m.Topic, Attempt: m.Attempt, PublishedAt: m.PublishedAt, Headers: m.Headers}
			if utf8.Valid(m.Payload) {
				t.Payload = string(m.Payload)
			} else {
				t.Payload, t.Encoding = base64.StdEncoding.EncodeToString(m.Payload), "base64"
			}
			if err := enc.Encode(t); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(e.stdout, "%s key=%q attempt=%d %q\n", m.ID, m.Key, m.Attempt, m.Payload)
		}
		if *n > 0 && count == *n {
			stop()
		}
		return nil
	})
	return broker.Consume(ctx, sub, h, broker.ConsumeOptions{
		OnError: func(m *broker.Message, err error) { fmt.Fprintf(e.stderr, "tail: %s: %v\n", m.ID, err) },
	})
}
