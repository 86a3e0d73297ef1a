package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// TopicSpec describes a topic to create.
type TopicSpec struct {
	// Name of the topic.
	Name string
	// Partitions; 0 means Options.Partitions.
	Partitions int
	// ReplicationFactor; 0 means Options.ReplicationFactor.
	ReplicationFactor int
	// Configs are topic configs over Options.TopicConfigs, such as
	// {"cleanup.policy": "compact"} for a compacted topic, where the newest
	// record of each key is kept and a nil payload (a tombstone) deletes
	// the key.
	Configs map[string]string
}

// CreateTopic creates a topic. When it exists already the error matches
// errors.Is(err, kerr.TopicAlreadyExists).
func (b *Broker) CreateTopic(ctx context.Context, spec TopicSpec) error {
	const op = "kafka: create topic"
	if spec.Name == "" {
		return errf(semantics.InvalidArgument, op, "TopicSpec.Name is required")
	}
	parts, rf := spec.Partitions, spec.ReplicationFactor
	if parts == 0 {
		parts = b.opts.Partitions
	}
	if rf == 0 {
		rf = b.opts.ReplicationFactor
	}
	var cfg map[string]*string
	if len(b.opts.TopicConfigs)+len(spec.Configs) > 0 {
		cfg = make(map[string]*string)
		for k, v := range b.opts.TopicConfigs {
			cfg[k] = kadm.StringPtr(v)
		}
		for k, v := range spec.Configs {
			cfg[k] = kadm.StringPtr(v)
		}
	}
	_, err := b.adm.CreateTopic(ctx, int32(parts), int16(rf), cfg, spec.Name)
	if err != nil {
		return wrap(op, fmt.Errorf("topic %s: %w", spec.Name, err))
	}
	b.created.Store(spec.Name, struct{}{})
	return nil
}

// PartitionLag is how far one group is behind on one partition.
type PartitionLag struct {
	Topic     string
	Partition int32
	// Start and End are the partition's log start and end offsets.
	Start, End int64
	// Committed is the group's committed offset, -1 when it has none.
	Committed int64
	// Lag is End - Committed; with no commit it is End - Start, what a
	// group that starts at the earliest offset has left to read.
	Lag int64
	// Member is the client ID and host of the member consuming the
	// partition, "" when no member holds it.
	Member string
}

// Lag reports the lag of group on every partition of topic (log end offset
// minus committed offset), for metrics and the command-line tool.
func (b *Broker) Lag(ctx context.Context, group, topic string) ([]PartitionLag, error) {
	const op = "kafka: lag"
	st, err := b.groupState(ctx, group, topic)
	if err != nil {
		return nil, wrap(op, err)
	}
	return st.lags, nil
}

var _ broker.BacklogReporter = (*Broker)(nil)

// Backlog reports group's backlog on topic for the queuekit command and
// metrics: Pending is the lag summed over partitions (Parts has each one and
// its owner) and Consumers the group's members. Kafka's lag already counts
// messages in flight and held back by a nack, so InFlight and Delayed are
// -1. A group with neither members nor committed offsets is NotFound.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (broker.Backlog, error) {
	const op = "kafka: backlog"
	st, err := b.groupState(ctx, group, topic)
	if err != nil {
		return broker.Backlog{}, wrap(op, err)
	}
	if !st.exists {
		return broker.Backlog{}, errf(semantics.NotFound, op, "consumer group %s has no members and no committed offsets", group)
	}
	bl := broker.Backlog{InFlight: -1, Delayed: -1, Consumers: len(st.members)}
	for _, l := range st.lags {
		bl.Pending += l.Lag
		bl.Parts = append(bl.Parts, broker.BacklogPart{Partition: l.Partition, Pending: l.Lag, Owner: l.Member})
	}
	return bl, nil
}

// BalanceReport says how evenly group spreads over topic: idle members (more
// members than partitions) and badly skewed partitions (a hot key).
type BalanceReport struct {
	Group, Topic string
	// Members in the group and Partitions of the topic.
	Members, Partitions int
	// Assigned maps each member (client ID and host) to its partitions of
	// the topic.
	Assigned map[string][]int32
	// IdleMembers hold no partition of the topic.
	IdleMembers []string
	// Messages per partition (log end minus log start offset), indexed by
	// partition.
	Messages []int64
	// Skewed lists the partitions holding more than SkewFactor times the
	// mean number of messages.
	Skewed []int32
	// Problems describes each finding in a sentence; empty when balanced.
	Problems []string
}

// DefaultSkewFactor is the skew factor CheckBalance uses when given 0.
const DefaultSkewFactor = 2.0

// CheckBalance inspects group on topic: it reports members with no
// partition (a group with more members than partitions keeps the extra ones
// idle), members holding more than one partition above another, and
// partitions whose message count exceeds skewFactor times the mean (0 means
// DefaultSkewFactor). Skew is judged only once the topic holds at least 10
// messages per partition.
func (b *Broker) CheckBalance(ctx context.Context, group, topic string, skewFactor float64) (*BalanceReport, error) {
	const op = "kafka: check balance"
	if skewFactor <= 0 {
		skewFactor = DefaultSkewFactor
	}
	st, err := b.groupState(ctx, group, topic)
	if err != nil {
		return nil, wrap(op, err)
	}
	r := &BalanceReport{Group: group, Topic: topic, Members: len(st.members), Partitions: len(st.lags), Assigned: map[string][]int32{}}
	minParts, maxParts := -1, 0
	for _, m := range st.members {
		ps := st.assigned[m]
		r.Assigned[m] = ps
		if len(ps) == 0 {
			r.IdleMembers = append(r.IdleMembers, m)
		}
		if minParts < 0 || len(ps) < minParts {
			minParts = len(ps)
		}
		maxParts = max(maxParts, len(ps))
	}
	if n := len(r.IdleMembers); n > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d of %d members hold no partition of %s (it has %d partitions): idle consumers", n, r.Members, topic, r.Partitions))
	}
	if minParts >= 0 && maxParts-minParts > 1 {
		r.Problems = append(r.Problems, fmt.Sprintf("uneven assignment: members hold between %d and %d partitions", minParts, maxParts))
	}
	var total int64
	r.Messages = make([]int64, len(st.lags))
	for i, l := range st.lags {
		r.Messages[i] = l.End - l.Start
		total += r.Messages[i]
	}
	if n := int64(len(r.Messages)); n > 1 && total >= 10*n {
		mean := float64(total) / float64(n)
		for i, m := range r.Messages {
			if float64(m) > skewFactor*mean {
				r.Skewed = append(r.Skewed, int32(i))
				r.Problems = append(r.Problems, fmt.Sprintf("partition %d holds %d of %d messages (%.0f%%, %.1fx the mean): a hot key skews it", i, m, total, 100*float64(m)/float64(total), float64(m)/mean))
			}
		}
	}
	return r, nil
}

type groupState struct {
	lags     []PartitionLag     // by partition
	members  []string           // sorted
	assigned map[string][]int32 // member -> partitions of the topic
	exists   bool               // the group has members or committed offsets
}

func (b *Broker) groupState(ctx context.Context, group, topic string) (*groupState, error) {
	if group == "" || topic == "" {
		return nil, errf(semantics.InvalidArgument, "kafka", "group and topic are required")
	}
	starts, err := b.adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	ends, err := b.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	if err := ends.Error(); err != nil {
		return nil, fmt.Errorf("topic %s: %w", topic, err)
	}
	if len(ends[topic]) == 0 {
		return nil, errf(semantics.NotFound, "kafka", "topic %s has no partitions", topic)
	}
	// A group that never committed or joined is not an error: it lags by
	// everything.
	commits, err := b.adm.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, fmt.Errorf("group %s: %w", group, err)
	}
	described, err := b.adm.DescribeGroups(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, fmt.Errorf("group %s: %w", group, err)
	}
	st := &groupState{assigned: map[string][]int32{}, exists: len(commits) > 0}
	owner := map[int32]string{}
	if d, ok := described[group]; ok && d.Err == nil {
		for _, m := range d.Members {
			name := m.ClientID + "@" + m.ClientHost + "/" + m.MemberID
			st.members = append(st.members, name)
			st.exists = true
			st.assigned[name] = nil
			if c, ok := m.Assigned.AsConsumer(); ok {
				for _, t := range c.Topics {
					if t.Topic != topic {
						continue
					}
					for _, p := range t.Partitions {
						st.assigned[name] = append(st.assigned[name], p)
						owner[p] = name
					}
				}
			}
			sort.Slice(st.assigned[name], func(i, j int) bool { return st.assigned[name][i] < st.assigned[name][j] })
		}
	}
	sort.Strings(st.members)
	st.lags = make([]PartitionLag, len(ends[topic]))
	for p, end := range ends[topic] {
		if int(p) >= len(st.lags) {
			continue
		}
		l := PartitionLag{Topic: topic, Partition: p, End: end.Offset, Committed: -1, Member: owner[p]}
		if s, ok := starts.Lookup(topic, p); ok && s.Err == nil {
			l.Start = s.Offset
		}
		if c, ok := commits.Lookup(topic, p); ok && c.Err == nil && c.At >= 0 {
			l.Committed = c.At
			l.Lag = max(0, l.End-c.At)
		} else {
			l.Lag = max(0, l.End-l.Start)
		}
		st.lags[p] = l
	}
	return st, nil
}
