package memory

import (
	"context"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

var _ driver.BacklogReporter = (*Broker)(nil)

// Backlog implements driver.BacklogReporter from Depth: Pending counts the
// messages ready and those waiting behind an earlier message of their key.
func (b *Broker) Backlog(_ context.Context, topic, group string) (driver.Backlog, error) {
	st, ok := b.Depth(topic, group)
	if !ok {
		return driver.Backlog{}, broker.Errorf(semantics.NotFound, "mem: backlog", "no group %q on topic %q", group, topic)
	}
	return driver.Backlog{
		Pending:   int64(st.Ready + st.Blocked),
		InFlight:  int64(st.InFlight),
		Delayed:   int64(st.Delayed),
		Consumers: st.Subscribers,
	}, nil
}
