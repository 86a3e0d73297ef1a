// Package batchbench measures what broker.ConsumeBatch gains over
// broker.Consume when handling a message costs a fixed round trip: one
// INSERT per call on a real PostgreSQL (internal/testenv.Postgres), a row per
// message in Consume's handler, every row of a batch in ConsumeBatch's.
//
//	go test -run '^$' -bench . -benchmem ./internal/batchbench | go run ./internal/benchtable
//
// It also runs ConsumeBatch over RabbitMQ (internal/testenv.RabbitMQ), whose
// ordered consumer hands out many messages of one key at once, to check
// per-key order within and across batches on a real broker. The package has
// no code of its own.
package batchbench
