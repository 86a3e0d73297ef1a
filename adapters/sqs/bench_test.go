package sqs_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
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
	"github.com/queuekit/queuekit/internal/testenv"
)

// The benchmarks run against fauxqs (or QUEUEKIT_SQS_ENDPOINT), raw
// aws-sdk-go-v2 and queuekit over the same client, with the same batching:
// publishers send 10 messages per request from benchWorkers goroutines;
// consumers receive up to 10 per long poll with benchPollers pollers and
// delete in batches. Messages are 256-byte bodies; the raw client sends the
// two attributes queuekit adds (ID and publish time), so both do the same
// work.
const (
	benchWorkers = 8
	benchPollers = 2
	benchBatch   = 10
	benchBody    = 256
	// benchVisibility is the visibility timeout of the consume benchmarks.
	// It bounds the cost of a receive cut off mid-response (see
	// cutReceives): the SDK retries such a receive, and the messages of
	// the first attempt stay hidden for this long. Deliveries settle in
	// milliseconds, far below half of it, so queuekit never extends it.
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

// measure is taken at the start of the timed part of a benchmark.
type measure struct {
	ms   runtime.MemStats
	reqs int64
	cut  int64
}

func start(b *testing.B) *measure {
	m := &measure{reqs: requests.Load(), cut: cutReceives.Load()}
	runtime.ReadMemStats(&m.ms)
	b.ResetTimer()
	return m
}

// report stops the timer and reports msgs/s, allocs/msg and requests/msg,
// and logs receives cut off mid-response (each costs up to
// benchVisibility seconds of waiting).
func (m *measure) report(b *testing.B) {
	b.StopTimer()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(ms.Mallocs-m.ms.Mallocs)/float64(b.N), "allocs/msg")
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

// parallelBatches runs send from benchWorkers goroutines until b.N messages
// went out in batches of up to benchBatch, and reports msgs/s and
// allocs/msg.
func parallelBatches(b *testing.B, send func(n int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	m := start(b)
	for range benchWorkers {
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
		pub, err := qb.NewPublisher(context.Background())
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
	for range benchWorkers {
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
	qb, err := qsqs.New(client, qsqs.Options{Pollers: benchPollers, WaitTime: time.Second})
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
		for range benchPollers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					out, err := client.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{
						QueueUrl: &url, MaxNumberOfMessages: benchBatch, WaitTimeSeconds: 1, VisibilityTimeout: benchVisibility,
						MessageAttributeNames:       []string{"All"},
						MessageSystemAttributeNames: []types.MessageSystemAttributeName{"ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"},
					})
					if err != nil {
						if ctx.Err() == nil {
							b.Error(err)
						}
						return
					}
					if len(out.Messages) == 0 {
						continue
					}
					entries := make([]types.DeleteMessageBatchRequestEntry, len(out.Messages))
					for i, m := range out.Messages {
						entries[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle}
					}
					dout, err := client.DeleteMessageBatch(context.Background(), &awssqs.DeleteMessageBatchInput{QueueUrl: &url, Entries: entries})
					if err == nil && len(dout.Failed) > 0 {
						err = fmt.Errorf("%d deletes failed: %s", len(dout.Failed), aws.ToString(dout.Failed[0].Message))
					}
					if err != nil {
						b.Error(err)
						return
					}
					if done.Add(int64(len(out.Messages))) >= int64(b.N) {
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
		sub, err := qb.NewSubscriber(context.Background(), broker.SubscriberOptions{Topic: name, AckTimeout: benchVisibility * time.Second})
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
		}), broker.ConsumeOptions{Concurrency: benchPollers * benchBatch})
		m.report(b)
		if err != nil {
			b.Fatal(err)
		}
	})
}
