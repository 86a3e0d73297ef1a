package memory

import "sort"

// GroupStats is a snapshot of one consumer group, for metrics and lag.
type GroupStats struct {
	// Topic the group consumes.
	Topic string
	// Group is "" for the messages of a topic that has no group yet.
	Group string
	// Subscribers currently open in the group.
	Subscribers int
	// Ready messages wait for a subscriber.
	Ready int
	// Blocked messages wait for an earlier message of their key.
	Blocked int
	// InFlight messages were delivered and are not settled yet.
	InFlight int
	// Delayed messages were nacked with a delay that has not passed, or
	// published with a DeliverAt that has not come.
	Delayed int
	// Counters since the group was created.
	Published, Acked, Redelivered, DeadLettered uint64
}

// Depth is every message the group holds: Ready + Blocked + InFlight +
// Delayed. It is the group's lag.
func (s GroupStats) Depth() int { return s.Ready + s.Blocked + s.InFlight + s.Delayed }

// Stats returns a snapshot of every group of every topic, sorted by topic
// then group. It returns nil once the broker is closed.
func (b *Broker) Stats() []GroupStats {
	b.c.mu.RLock()
	topics := make([]*topic, 0, len(b.c.topics))
	for _, t := range b.c.topics {
		topics = append(topics, t)
	}
	b.c.mu.RUnlock()
	var out []GroupStats
	for _, t := range topics {
		for _, g := range *t.targets.Load() {
			out = append(out, g.stats())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Group < out[j].Group
	})
	return out
}

// Depth returns the snapshot of group of topic, and false when there is no
// such group.
func (b *Broker) Depth(topic, group string) (GroupStats, bool) {
	b.c.mu.RLock()
	t := b.c.topics[topic]
	b.c.mu.RUnlock()
	if t == nil {
		return GroupStats{}, false
	}
	for _, g := range *t.targets.Load() {
		if st := g.stats(); st.Group == group {
			return st, true
		}
	}
	return GroupStats{}, false
}

func (g *group) stats() GroupStats {
	g.lock()
	defer g.unlock()
	return GroupStats{
		Topic:        g.t.name,
		Group:        g.name,
		Subscribers:  len(g.subs),
		Ready:        g.ready.n,
		Blocked:      g.blocked,
		InFlight:     g.inflight,
		Delayed:      len(g.delayed),
		Published:    g.published,
		Acked:        g.acked,
		Redelivered:  g.redelivered,
		DeadLettered: g.dead,
	}
}
