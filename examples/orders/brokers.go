//go:build allbrokers

package main

import _ "github.com/queuekit/queuekit/adapters/all" // every adapter: kafka://, amqp://, sqs://, gcppubsub://, ...
