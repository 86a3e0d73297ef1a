package redisstore_test

import (
	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dedupe/redisstore"
	"github.com/queuekit/queuekit/semantics"
)

func ExampleNew() {
	store := redisstore.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"}), redisstore.Options{}) // keys "evt:<id>"
	_ = dedupe.New(store, dedupe.Options{})                                                                // in a middleware chain
	_ = broker.SubscriberOptions{Topic: "orders", Guarantee: semantics.EffectivelyOnce}                    // declared once
	_ = broker.ConsumeOptions{Idempotency: store}                                                          // or as Consume's store
}
