// Package all registers every queuekit adapter's URL scheme. Import it for
// its side effect when a program picks its broker from configuration:
//
//	import _ "github.com/queuekit/queuekit/adapters/all"
//
// A program that needs one broker should import that adapter alone, so that
// it compiles no other broker's SDK.
package all

import (
	_ "github.com/queuekit/queuekit/adapters/kafka"        // kafka://
	_ "github.com/queuekit/queuekit/adapters/memory"       // mem://
	_ "github.com/queuekit/queuekit/adapters/nats"         // nats://
	_ "github.com/queuekit/queuekit/adapters/pubsub"       // gcppubsub://
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"     // amqp://, amqps://
	_ "github.com/queuekit/queuekit/adapters/redisstreams" // redis+streams://, rediss+streams://
	_ "github.com/queuekit/queuekit/adapters/sqs"          // sqs://
)
