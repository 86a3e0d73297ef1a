// Package wmbench holds the benchmarks of queuekit's adapters against
// Watermill's pub/subs for the same broker, in one run (see bench_test.go):
// the memory adapter against GoChannel, the Kafka adapter against
// watermill-kafka (both on kfake, run in a separate process so that its
// allocations are not counted), and the RabbitMQ adapter against
// watermill-amqp. It has no code of its own.
//
//	go test -run '^$' -bench . -benchmem ./adapters/watermill/wmbench | go run ./internal/benchtable
package wmbench
