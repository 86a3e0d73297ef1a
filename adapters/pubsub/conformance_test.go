package pubsub_test

import (
	"context"
	"testing"

	qpubsub "github.com/queuekit/queuekit/adapters/pubsub"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
)

// TestConformance runs the shared property suite against the server
// testenv.PubSub finds or starts (pstest). pstest forwards a dead letter
// again and again; the suite counts the copies as duplicates, and
// stopDeadLettering ends the forwarding when the property is over.
func TestConformance(t *testing.T) {
	url := brokerURL(t)
	conformance.Run(t, conformance.Harness{
		Name: "pubsub",
		Open: func(ctx context.Context) (broker.Broker, error) {
			b, err := broker.Open(ctx, url)
			if err != nil {
				return nil, err
			}
			return stopDeadLettering{b.(*qpubsub.Broker)}, nil
		},
	})
}

// stopDeadLettering deletes the subscription of a subscriber with a
// dead-letter policy when that subscriber closes. pstest (v2.9.0) "acks" a
// message it dead-letters by message ID, which matches no ack ID, so it
// forwards the message again on every delivery tick (~100 copies a second)
// for as long as the subscription exists, each copy with the ack ID of the
// one before. Besides the CPU this costs the shared server, a copy that
// reaches the client while its nack of the previous copy is pending (up to
// 100ms) is dropped by the client (pubsub v2.9.0 messageIterator.receive)
// with its lease kept, so that the dead-letter subscriber's Close waits for
// it until MaxExtension (60 minutes): the "close: acks and nacks still in
// flight" flake. The real service gives every delivery its own ack ID.
type stopDeadLettering struct{ *qpubsub.Broker }

func (b stopDeadLettering) NewSubscriber(ctx context.Context, opts broker.SubscriberOptions) (broker.Subscriber, error) {
	s, err := b.Broker.NewSubscriber(ctx, opts)
	if err != nil || opts.MaxAttempts == 0 {
		return s, err
	}
	opts = opts.WithDefaults()
	return deleteOnClose{s.(batchSubscriber), b.Broker, qpubsub.DefaultSubscriptionName(opts.Topic, opts.Group)}, nil
}

type batchSubscriber interface {
	broker.Subscriber
	broker.BatchReceiver
}

// deleteOnClose deletes subscription sub after closing the subscriber.
type deleteOnClose struct {
	batchSubscriber
	b   *qpubsub.Broker
	sub string
}

func (s deleteOnClose) Close(ctx context.Context) error {
	err := s.batchSubscriber.Close(ctx)
	if derr := s.b.DeleteSubscription(ctx, s.sub); err == nil {
		err = derr
	}
	return err
}
