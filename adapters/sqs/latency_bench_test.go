package sqs_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchlat"
)

// rawLatencyPollers is how many long polls the raw latency variant keeps
// waiting. fauxqs answers every waiting long poll when a message arrives
// (all but one of them empty), so pollers beyond what the rate needs only
// add empty receives to each message's way: two keep one poll waiting
// while the other handles and deletes.
const rawLatencyPollers = 2

// latencyMaxRate caps the latency benchmark's rate. fauxqs is one Node.js
// process that spends about 30µs of CPU per message sent, received and
// deleted, so half its maximum keeps it ~80% busy on a 2-core machine
// shared with the client: there every variant's tail (and, run to run,
// its median) measured fauxqs's queueing, 100ms-1s. At 1,000 msg/s it
// stays below a third of a core.
const latencyMaxRate = 1000

// rawLatencySends bounds the SendMessageBatch requests the raw latency
// variant has in flight: enough that a request never waits for another
// at half the maximum rate.
const rawLatencySends = 64

// BenchmarkSQSLatency: publish → handle p50/p99/p999 at half the maximum
// rate, measured the same way for every adapter (see internal/benchlat),
// on fauxqs.
//
// raw is aws-sdk-go-v2 at its best for latency: rawLatencyPollers
// long-polling (WaitTimeSeconds 20) consumers running before the clock
// starts, each handling a receive's messages and then deleting them in
// one DeleteMessageBatch (rawReceive, as in BenchmarkSQSConsume); what
// fell due is sent at once, cut into SendMessageBatch requests of 10, each on
// its own goroutine (up to rawLatencySends at once), none waiting for
// another. Its payloads carry the same binary stamp as queuekit's, so raw
// base64-encodes them into the SQS body as queuekit does, and sends
// queuekit's ID and publish-time attributes. queuekit is benchlat.Queuekit
// with the adapter's defaults (two pollers, 5s long polls, queued
// deletes). Visibility timeouts play no part: every message is handled
// once, within milliseconds.
func BenchmarkSQSLatency(b *testing.B) {
	const group = "bench-latency"
	client := benchClient(b)
	qb, err := qsqs.New(client, qsqs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	urls := map[string]string{}
	newTopic := func() string {
		name, url := benchQueue(b, qb)
		mu.Lock()
		urls[name] = url
		mu.Unlock()
		return name
	}
	payload := bytes.Repeat([]byte("x"), benchBody)

	raw := func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		mu.Lock()
		url := urls[topic]
		mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tr := benchlat.NewTracker(n, handled)
		var recvErr atomic.Pointer[error]
		var polls sync.WaitGroup
		for range rawLatencyPollers {
			polls.Add(1)
			go func() {
				defer polls.Done()
				for ctx.Err() == nil {
					_, err := rawReceive(ctx, client, url, func(m *types.Message) {
						p, err := base64.StdEncoding.DecodeString(aws.ToString(m.Body))
						if err != nil {
							recvErr.CompareAndSwap(nil, &err)
							return
						}
						tr.Handle(p)
					})
					if err != nil && ctx.Err() == nil {
						recvErr.CompareAndSwap(nil, &err)
						return
					}
				}
			}()
		}
		defer func() { cancel(); polls.Wait() }()
		send := func(entries []types.SendMessageBatchRequestEntry) error {
			out, err := client.SendMessageBatch(context.Background(), &awssqs.SendMessageBatchInput{QueueUrl: &url, Entries: entries})
			if err == nil && len(out.Failed) > 0 {
				err = fmt.Errorf("%d entries failed: %s", len(out.Failed), aws.ToString(out.Failed[0].Message))
			}
			return err
		}
		if err := send(rawLatencyEntries(benchlat.Warmup, 0, 1, nil)); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		var sendErr atomic.Pointer[error]
		var sends sync.WaitGroup
		inFlight := make(chan struct{}, rawLatencySends)
		start := benchlat.OpenLoop(n, interval, benchBatch, func(from, to int, due func(int) time.Duration) {
			for lo := from; lo < to; lo += benchBatch {
				entries := rawLatencyEntries(payload, lo, min(lo+benchBatch, to), due)
				inFlight <- struct{}{}
				sends.Add(1)
				go func() {
					defer sends.Done()
					if err := send(entries); err != nil {
						sendErr.CompareAndSwap(nil, &err)
					}
					<-inFlight
				}()
			}
		})
		sends.Wait()
		if err := sendErr.Load(); err != nil {
			return 0, *err
		}
		if err := tr.Wait(); err != nil {
			if rerr := recvErr.Load(); rerr != nil {
				err = fmt.Errorf("%w (consuming: %w)", err, *rerr)
			}
			return 0, err
		}
		return time.Since(start), nil
	}

	templates := []*broker.Message{{Payload: payload}}
	benchlat.Bench(b, newTopic, benchlat.Options{Probe: 5000, Duration: 3 * time.Second, MaxRate: latencyMaxRate},
		benchlat.Variant{Name: "raw", Run: raw},
		benchlat.Variant{Name: "queuekit", Run: benchlat.Queuekit(broker.New(qb), group, benchBatch, templates)})
}

// rawLatencyEntries returns the entries of messages [from, to): payload
// stamped with each one's due time (payload itself when due is nil),
// base64-encoded, with queuekit's ID and publish-time attributes.
func rawLatencyEntries(payload []byte, from, to int, due func(int) time.Duration) []types.SendMessageBatchRequestEntry {
	entries := make([]types.SendMessageBatchRequestEntry, 0, to-from)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := from; i < to; i++ {
		p := payload
		if due != nil {
			p = benchlat.Stamp(payload, due(i))
		}
		entries = append(entries, types.SendMessageBatchRequestEntry{
			Id:          aws.String(strconv.Itoa(i - from)),
			MessageBody: aws.String(base64.StdEncoding.EncodeToString(p)),
			MessageAttributes: map[string]types.MessageAttributeValue{
				qsqs.AttrID:          {DataType: aws.String("String"), StringValue: aws.String(broker.NewID())},
				qsqs.AttrPublishedAt: {DataType: aws.String("String"), StringValue: aws.String(now)},
			},
		})
	}
	return entries
}
