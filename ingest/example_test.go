package ingest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/ingest"
)

// A Handler mounted in a server of your own: a token allowed one topic, a
// zone of 6 requests a minute with a burst of 2 that passes at once
// (nginx's "rate=6r/m" and "limit_req zone=ingest burst=2 nodelay"), and a
// retry with the same Idempotency-Key publishing the same message ID.
func Example() {
	ctx := context.Background()
	b := broker.New(memory.New(memory.Options{}))
	defer b.Close(ctx)
	sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	defer sub.Close(ctx)
	pub, _ := b.NewPublisher(ctx)
	defer pub.Close(ctx)

	cfg, err := ingest.ParseConfig(strings.NewReader(`{
		"tokens": [{"name": "checkout", "sha256": "` + ingest.HashToken("s3cret") + `", "topics": ["orders"]}],
		"zones": [{"name": "ingest", "key": "token", "rate": "6r/m", "burst": 2, "nodelay": true}]
	}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	h, err := ingest.New(ingest.Options{Publisher: pub, Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	post := func(key, body string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/topics/orders/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer s3cret")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer resp.Body.Close()
		reply, _ := io.ReadAll(resp.Body)
		fmt.Print(resp.StatusCode, " ", resp.Header.Get("Retry-After"), " ", string(reply))
	}
	post("order-1", `{"total":3}`)
	post("order-1", `{"total":3}`) // a retry: same ID, deduplicated downstream
	post("order-2", `{"total":5}`)
	post("order-3", `{"total":7}`) // over the burst

	for i := 0; i < 3; i++ {
		d, _ := sub.Receive(ctx)
		fmt.Println(d.Message().ID, string(d.Message().Payload))
		_ = d.Ack(ctx)
	}
	// Output:
	// 200  {"topic":"orders","ids":["order-1"]}
	// 200  {"topic":"orders","ids":["order-1"]}
	// 200  {"topic":"orders","ids":["order-2"]}
	// 429 10 {"error":"rate_limited","message":"rate limit of zone \"ingest\" exceeded","retry_after":10}
	// order-1 {"total":3}
	// order-1 {"total":3}
	// order-2 {"total":5}
}
