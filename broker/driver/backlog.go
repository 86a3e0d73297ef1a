package driver

import "context"

// BacklogReporter is an optional Broker interface, found by type assertion,
// for adapters that can tell how far a consumer group is behind. The
// queuekit command's lag command and metrics use it.
type BacklogReporter interface {
	// Backlog reports group's backlog on topic. It returns a NotFound
	// error when the group does not exist.
	Backlog(ctx context.Context, topic, group string) (Backlog, error)
}

// Backlog is what a consumer group has yet to finish on a topic. Counts the
// broker cannot tell are -1.
type Backlog struct {
	// Pending messages wait to be delivered: Kafka's lag (log end minus
	// committed offset), SQS's visible messages, RabbitMQ's ready ones.
	Pending int64
	// InFlight messages were delivered and are not settled yet.
	InFlight int64
	// Delayed messages were nacked with a delay that has not passed.
	Delayed int64
	// Consumers currently attached to the group, -1 when unknown.
	Consumers int
	// Parts breaks the backlog down where the broker partitions it
	// (Kafka: one entry per partition); nil otherwise.
	Parts []BacklogPart
}

// BacklogPart is the backlog of one partition.
type BacklogPart struct {
	Partition int32
	Pending   int64
	// Owner is the member consuming the partition, "" when none does.
	Owner string
}

// Total is Pending plus the InFlight and Delayed counts that are known.
func (b Backlog) Total() int64 {
	t := b.Pending
	if b.InFlight > 0 {
		t += b.InFlight
	}
	if b.Delayed > 0 {
		t += b.Delayed
	}
	return t
}
