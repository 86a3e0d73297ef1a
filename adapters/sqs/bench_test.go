package sqs_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	qsqs "github.com/queuekit/queuekit/adapters/sqs"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks run against fauxqs (or QUEUEKIT_SQS_ENDPOINT): raw
// aws-sdk-go-v2 written as a careful user writes it for throughput, and
// queuekit with the adapter's defaults (sqs.Options{}, broker.ConsumeOptions{})
// over the same client. Both give the same durability: a message counts as
// published once SendMessageBatch accepted it, and as consumed once it was
// handled and its delete was sent (at-least-once: a delete lost with the
// process only brings the message back).
//
//   - Publish: the workload is benchSenders goroutines, each with batches
//     of benchBatch messages to send. raw sends each batch as one
//     SendMessageBatch (10 entries, SQS's maximum per request) and waits
//     for it: the AWS advice for throughput (batch actions, several
//     threads); queuekit Publishes each batch and waits the same way.
//   - Consume: raw runs rawPollers goroutines, each looping
//     ReceiveMessage(MaxNumberOfMessages 10, WaitTimeSeconds 20: long
//     polling), handling the messages and deleting them with one
//     DeleteMessageBatch — the AWS advice again (long polling, batch
//     receive and delete, several concurrent pollers: more than 8 gains
//     nothing here, fauxqs is one Node.js process). queuekit is
//     broker.Consume with its defaults (one handler at a time) over a
//     subscriber with the adapter's defaults.
//
// fauxqs answers in about a millisecond, so here two pollers would do;
// against SQS (10-20ms a request) the number of pollers decides. With 15ms
// added to every request (an experiment, not a benchmark here) raw with 8
// pollers drained about 1,900 msg/s, queuekit with 2 pollers (the
// default before) 970, with up to 8 (the default now) 1,850-3,300.
//
// Messages are 256-byte bodies; raw sends the two attributes queuekit adds
// (ID and publish time), so both put the same bytes on the wire.
const (
	benchSenders = 8
	rawPollers   = 8
	benchBatch   = 10
	benchBody    = 256
	// benchVisibility is the visibility timeout of the consume benchmarks,
	// raw and queuekit. It bounds the cost of a receive cut off
	// mid-response (see cutReceives): the SDK retries such a receive, and
	// the messages of the first attempt stay hidden for this long.
	// Deliveries settle in milliseconds, far below half of it, so queuekit
	// never extends it.
	benchVisibility = 4
)

// requests counts the HTTP requests of the benchmark client, so that the
// benchmarks report requests per message: the figure that decides
// throughput against a real SQS, and one that a loaded machine cannot blur.
var requests atomic.Int64

type countRequests struct{ http.RoundTripper }

func (c countRequests) RoundTrip(r *http.Request) (*http.Response, error) {
	requests.Add(1)
	resp, err := c.RoundTripper.RoundTrip(r)
	if err == nil && strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".ReceiveMessage") {
		resp.Body = &watchBody{ReadCloser: resp.Body}
	}
	return resp, err
}

// cutReceives counts ReceiveMessage responses whose body failed mid-read.
// Under CPU load net/http now and then closes the connection while the
// SDK reads a 200 response (read: use of closed network connection); the
// SDK retries the receive, and the messages SQS put in the lost response
// stay hidden for the visibility timeout. Raw and queuekit see it alike.
var cutReceives atomic.Int64

type watchBody struct{ io.ReadCloser }

func (w *watchBody) Read(p []byte) (int, error) {
	n, err := w.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		cutReceives.Add(1)
	}
	return n, err
}

func benchClient(tb testing.TB) *awssqs.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return awssqs.New(awssqs.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(testenv.SQS(tb)),
		Credentials:  credentials.NewStaticCredentialsProvider("bench", "bench", ""),
		HTTPClient:   &http.Client{Transport: countRequests{tr}},
	})
}

// measure is taken at the start of the timed part of a benchmark: a
// benchmeter.Meter (msgs/s, allocs/msg, cpu-ns/msg, and fauxqs's CPU per
// message as srv-cpu-ns/msg, when it is the one "node" process) plus
// the requests counted.
type measure struct {
	meter *benchmeter.Meter
	reqs  int64
	cut   int64
}

func start(b *testing.B) *measure {
	m := &measure{reqs: requests.Load(), cut: cutReceives.Load()}
	m.meter = benchmeter.StartWithServer(b, "node")
	return m
}

// report stops the timer and reports the meter's figures and
// requests/msg, and logs receives cut off mid-response (each costs up to
// benchVisibility seconds of waiting).
func (m *measure) report(b *testing.B) {
	m.meter.Stop(b.N)
	b.ReportMetric(float64(requests.Load()-m.reqs)/float64(b.N), "reqs/msg")
	if cut := cutReceives.Load() - m.cut; cut > 0 {
		b.Logf("b.N=%d: %d receive(s) cut off mid-response and retried by the SDK; their messages came back after the %d s visibility timeout", b.N, cut, benchVisibility)
	}
}

func benchQueue(b *testing.B, qb *qsqs.Broker) (name, url string) {
	b.Helper()
	name = fmt.Sprintf("qk-bench-%d-%d", time.Now().UnixNano(), topicSeq.Add(1))
	info, err := qb.EnsureQueue(context.Background(), name, qsqs.QueueSpec{})
	if err != nil {
		b.Fatal(err)
	}
	// Delete it afterwards: fauxqs keeps every message in memory, and a
	// heap full of earlier runs' messages would slow the later runs.
	b.Cleanup(func() {
		_, _ = qb.Client().DeleteQueue(context.Background(), &awssqs.DeleteQueueInput{QueueUrl: &info.URL})
	})
	return name, info.URL
}

// rawEntries returns n entries as queuekit would send them (body plus ID
// and publish-time attributes).
func rawEntries(n int, body string) []types.SendMessageBatchRequestEntry {
	entries := make([]types.SendMessageBatchRequestEntry, n)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := range entries {
		entries[i] = types.SendMessageBatchRequestEntry{
			Id:          aws.String(strconv.Itoa(i)),
			MessageBody: aws.String(body),
			MessageAttributes: map[string]types.MessageAttributeValue{
				qsqs.AttrID:          {DataType: aws.String("String"), StringValue: aws.String(broker.NewID())},
				qsqs.AttrPublishedAt: {DataType: aws.String("String"), StringValue: aws.String(now)},
			},
		}
	}
	return entries
}

// parallelBatches runs send from benchSenders goroutines until b.N messages
// went out in batches of up to benchBatch, and reports msgs/s and
// allocs/msg.
func parallelBatches(b *testing.B, send func(n int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	m := start(b)
	for range benchSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				end := next.Add(benchBatch)
				n := int64(benchBatch)
				if end > int64(b.N) {
					n = int64(b.N) - (end - benchBatch)
				}
				if n <= 0 {
					return
				}
				if err := send(int(n)); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	m.report(b)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkSQSPublish(b *testing.B) {
	client := benchClient(b)
	qb, err := qsqs.New(client, qsqs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	body := string(bytes.Repeat([]byte("x"), benchBody))
	b.Run("raw", func(b *testing.B) {
		_, url := benchQueue(b, qb)
		parallelBatches(b, func(n int) error {
			out, err := client.SendMessageBatch(context.Background(), &awssqs.SendMessageBatchInput{QueueUrl: &url, Entries: rawEntries(n, body)})
			if err == nil && len(out.Failed) > 0 {
				err = fmt.Errorf("%d entries failed", len(out.Failed))
			}
			return err
		})
	})
	b.Run("queuekit", func(b *testing.B) {
		name, _ := benchQueue(b, qb)
		pub, err := broker.New(qb).NewPublisher(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close(context.Background())
		payload := []byte(body)
		parallelBatches(b, func(n int) error {
			msgs := make([]*broker.Message, n)
			for i := range msgs {
				msgs[i] = &broker.Message{Payload: payload}
			}
			return pub.Publish(context.Background(), name, msgs...)
		})
	})
}

// fill puts n messages on the queue at url, with the raw client.
func fill(b *testing.B, client *awssqs.Client, url string, n int) {
	b.Helper()
	body := string(bytes.Repeat([]byte("x"), benchBody))
	var wg sync.WaitGroup
	var next atomic.Int64
	for range benchSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				end := next.Add(benchBatch)
				k := min(int64(benchBatch), int64(n)-(end-benchBatch))
				if k <= 0 {
					return
				}
				out, err := client.SendMessageBatch(context.Background(), &awssqs.SendMessageBatchInput{QueueUrl: &url, Entries: rawEntries(int(k), body)})
				if err == nil && len(out.Failed) > 0 {
					err = fmt.Errorf("fill: %d entries failed: %s", len(out.Failed), aws.ToString(out.Failed[0].Message))
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkSQSConsume(b *testing.B) {
	client := benchClient(b)
	qb, err := qsqs.New(client, qsqs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("raw", func(b *testing.B) {
		_, url := benchQueue(b, qb)
		fill(b, client, url, b.N)
		var done atomic.Int64
		var wg sync.WaitGroup
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		m := start(b)
		for range rawPollers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					n, err := rawReceive(ctx, client, url, func(*types.Message) {})
					if err != nil {
						if ctx.Err() == nil {
							b.Error(err)
						}
						return
					}
					if done.Add(int64(n)) >= int64(b.N) {
						cancel()
					}
				}
			}()
		}
		wg.Wait()
		m.report(b)
	})
	b.Run("queuekit", func(b *testing.B) {
		name, url := benchQueue(b, qb)
		fill(b, client, url, b.N)
		sub, err := broker.New(qb).NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: name, AckTimeout: benchVisibility * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(context.Background())
		var done atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		m := start(b)
		err = broker.Consume(ctx, sub, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			if done.Add(1) == int64(b.N) {
				cancel()
			}
			return nil
		}), broker.ConsumeOptions{})
		m.report(b)
		if err != nil {
			b.Fatal(err)
		}
	})
}

// rawReceive is one turn of a raw poller: one long poll for up to 10
// messages, handle on each, and one DeleteMessageBatch for them. It
// returns how many it handled.
func rawReceive(ctx context.Context, client *awssqs.Client, url string, handle func(*types.Message)) (int, error) {
	out, err := client.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{
		QueueUrl: &url, MaxNumberOfMessages: benchBatch, WaitTimeSeconds: 20, VisibilityTimeout: benchVisibility,
		MessageAttributeNames:       []string{"All"},
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{"ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"},
	})
	if err != nil || len(out.Messages) == 0 {
		return 0, err
	}
	entries := make([]types.DeleteMessageBatchRequestEntry, len(out.Messages))
	for i := range out.Messages {
		handle(&out.Messages[i])
		entries[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: out.Messages[i].ReceiptHandle}
	}
	// Not ctx: a delete is sent even when the benchmark ends meanwhile.
	dout, err := client.DeleteMessageBatch(context.WithoutCancel(ctx), &awssqs.DeleteMessageBatchInput{QueueUrl: &url, Entries: entries})
	if err == nil && len(dout.Failed) > 0 {
		err = fmt.Errorf("%d deletes failed: %s", len(dout.Failed), aws.ToString(dout.Failed[0].Message))
	}
	return len(out.Messages), err
}
