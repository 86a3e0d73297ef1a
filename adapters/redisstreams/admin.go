package redisstreams

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Backlog reports group's backlog on topic from XINFO GROUPS (Redis 7's
// lag) and the group's delay sets, summed over the shards:
//
//   - Pending: entries not yet delivered to the group (lag; -1 when Redis
//     cannot tell, after XDEL or trimming inside the unread part);
//   - InFlight: delivered and not acked, not waiting for a nack delay;
//   - Delayed: nacked with a delay (due or not), not yet claimed again,
//     and published for later (Message.DeliverAt), not yet due;
//   - Consumers: the most consumers the group lists on one shard, apart
//     from the adapter's parking consumer. A consumer that was killed stays
//     listed until its pending entries are claimed and it is deleted.
//
// With several shards, Parts has one entry per shard, with the consumer
// holding its lease under PerKey as Owner. A group that does not exist is
// a NotFound error.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (driver.Backlog, error) {
	const op = "redisstreams: backlog"
	if err := checkName(op, "topic", topic); err != nil {
		return driver.Backlog{}, err
	}
	if err := checkName(op, "group", group); err != nil {
		return driver.Backlog{}, err
	}
	tk, err := b.publishKeys(ctx, op, topic)
	if err != nil {
		return driver.Backlog{}, err
	}
	n := len(tk.streams)
	groups := make([]*redis.XInfoGroupsCmd, n)
	consumers := make([]*redis.XInfoConsumersCmd, n)
	delayed := make([]*redis.IntCmd, n)
	owners := make([]*redis.StringCmd, n)
	var scheduled *redis.IntCmd
	_, _ = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		scheduled = p.ZCard(ctx, tk.sched())
		for i, st := range tk.streams {
			groups[i] = p.XInfoGroups(ctx, st)
			consumers[i] = p.XInfoConsumers(ctx, st, group)
			delayed[i] = p.ZCard(ctx, tk.delay(i, group))
			owners[i] = p.Get(ctx, tk.lease(i, group))
		}
		return nil
	})
	var bl driver.Backlog
	for i := range n {
		gs, err := groups[i].Result()
		if err != nil && !isNoKey(err) {
			return driver.Backlog{}, wrap(op, err)
		}
		var g *redis.XInfoGroup
		for j := range gs {
			if gs[j].Name == group {
				g = &gs[j]
			}
		}
		if g == nil {
			if i == 0 {
				return driver.Backlog{}, driver.Errorf(semantics.NotFound, op, "topic %q has no group %q", topic, group)
			}
			continue // a shard that lost its group: nothing known
		}
		d, err := delayed[i].Result()
		if err != nil {
			return driver.Backlog{}, wrap(op, err)
		}
		if g.Lag < 0 || bl.Pending < 0 {
			bl.Pending = -1
		} else {
			bl.Pending += g.Lag
		}
		bl.InFlight += max(g.Pending-d, 0)
		bl.Delayed += d
		cs, err := consumers[i].Result()
		if err != nil && !isNoGroup(err) {
			return driver.Backlog{}, wrap(op, err)
		}
		live := 0
		for _, c := range cs {
			if c.Name != parkingConsumer {
				live++
			}
		}
		bl.Consumers = max(bl.Consumers, live)
		if n > 1 {
			owner, _ := owners[i].Result()
			bl.Parts = append(bl.Parts, driver.BacklogPart{Partition: int32(i), Pending: g.Lag, Owner: owner})
		}
	}
	if n, err := scheduled.Result(); err == nil {
		bl.Delayed += n
	}
	return bl, nil
}

// DeleteTopic deletes topic's streams with every group, pending entry and
// key the adapter keeps for it. Messages not yet consumed are lost.
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	const op = "redisstreams: delete topic"
	if err := checkName(op, "topic", topic); err != nil {
		return err
	}
	tk, err := b.publishKeys(ctx, op, topic)
	if err != nil {
		return err
	}
	gs, err := b.client.XInfoGroups(ctx, tk.streams[0]).Result()
	if err != nil && !isNoKey(err) {
		return wrap(op, err)
	}
	keys := append([]string{tk.meta(), tk.sched(), tk.schedMsg()}, tk.streams...)
	for _, g := range gs {
		keys = append(keys, tk.members(g.Name))
		for i := range tk.streams {
			keys = append(keys, tk.delay(i, g.Name), tk.lease(i, g.Name))
		}
	}
	if err := b.client.Del(ctx, keys...).Err(); err != nil {
		return wrap(op, err)
	}
	b.topicsMu.Lock()
	delete(b.topics, topic)
	b.topicsMu.Unlock()
	return nil
}
