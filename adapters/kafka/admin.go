package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/queuekit/queuekit/broker/driver"
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
	if err := checkTopic(op, spec.Name); err != nil {
		return err
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

// Declare creates topic (with Options.Partitions, ReplicationFactor and
// TopicConfigs, unless it exists; under ManualTopics it must exist) and
// makes each group a consumer group of it, so that every message published
// afterwards reaches the group even before any of its members joins: a
// group with no committed offset on a partition of topic gets one, at the
// offset it would start from (Options.StartOffset: the log start, so it
// also reads what the topic retained, or the log end). A group that has
// committed offsets, or whose members consume topic, is left as it is. It
// is idempotent.
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	const op = "kafka: declare"
	if err := checkTopic(op, topic); err != nil {
		return err
	}
	for _, g := range groups {
		if err := checkGroup(op, g); err != nil {
			return err
		}
	}
	if err := b.ensureTopics(ctx, topic); err != nil {
		return wrap(op, err)
	}
	for _, g := range groups {
		if err := b.declareGroup(ctx, topic, g); err != nil {
			return wrap(op, err)
		}
	}
	if len(groups) > 0 {
		b.grouped.Store(topic, struct{}{})
	}
	return nil
}

// declareGroup makes group a consumer group of topic (see Declare).
func (b *Broker) declareGroup(ctx context.Context, topic, group string) error {
	fetched, err := b.adm.FetchOffsetsForTopics(ctx, group, topic)
	unknownGroup := errors.Is(err, kerr.GroupIDNotFound)
	if err != nil && !unknownGroup {
		return fmt.Errorf("group %s: %w", group, err)
	}
	var missing []int32
	if unknownGroup {
		// A group the broker has never seen (kfake says so; Kafka answers
		// with no offsets): every partition of the topic is missing.
		td, terr := b.adm.ListTopics(ctx, topic)
		if terr != nil {
			return fmt.Errorf("topic %s: %w", topic, terr)
		}
		missing = append(missing, td[topic].Partitions.Numbers()...)
	}
	for p, o := range fetched[topic] {
		if o.Err == nil && o.At < 0 && !unknownGroup {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	list := b.adm.ListStartOffsets
	if b.opts.StartOffset == Latest {
		list = b.adm.ListEndOffsets
	}
	listed, err := list(ctx, topic)
	if err != nil {
		return fmt.Errorf("topic %s: %w", topic, err)
	}
	offs := kadm.Offsets{}
	for _, p := range missing {
		o, ok := listed.Lookup(topic, p)
		if !ok || o.Err != nil {
			return fmt.Errorf("topic %s: no offset for partition %d: %v", topic, p, o.Err)
		}
		offs.AddOffset(topic, p, o.Offset, -1)
	}
	cerr := b.adm.CommitAllOffsets(ctx, group, offs)
	if cerr == nil {
		return nil
	}
	// A group with live members refuses a commit from outside. Members
	// that consume topic hold positions of their own, which is what we
	// want; members that will consume it start from the log start under
	// Earliest, which includes every message published from now on. Only
	// under Latest would they miss what is published before they join.
	live := errors.Is(cerr, kerr.UnknownMemberID) || errors.Is(cerr, kerr.IllegalGeneration) ||
		errors.Is(cerr, kerr.RebalanceInProgress) || errors.Is(cerr, kerr.StaleMemberEpoch)
	if consuming, err := b.groupConsumes(ctx, group, topic); err == nil && consuming {
		return nil
	}
	if live && b.opts.StartOffset == Earliest {
		return nil
	}
	if live {
		return errf(semantics.Unsupported, "kafka", "group %s has live members on other topics, so Kafka refuses to set its start offsets on %s from outside, "+
			"and with start=latest its members would miss what is published before they are assigned %s: use start=earliest, or another group for this topic", group, topic, topic)
	}
	return fmt.Errorf("group %s: committing its start offsets on %s: %w", group, topic, cerr)
}

// groupConsumes reports whether a member of group is subscribed to topic or
// holds one of its partitions.
func (b *Broker) groupConsumes(ctx context.Context, group, topic string) (bool, error) {
	described, err := b.adm.DescribeGroups(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return false, err
	}
	d, ok := described[group]
	return ok && d.Err == nil && membersConsume(d, topic), nil
}

// membersConsume reports whether a member of d is subscribed to topic or
// holds one of its partitions.
func membersConsume(d kadm.DescribedGroup, topic string) bool {
	for _, m := range d.Members {
		if j, ok := m.Join.AsConsumer(); ok && slices.Contains(j.Topics, topic) {
			return true
		}
		if a, ok := m.Assigned.AsConsumer(); ok {
			for _, t := range a.Topics {
				if t.Topic == topic {
					return true
				}
			}
		}
	}
	return false
}

// HasGroup reports whether topic has a consumer group: one declared or
// subscribed through this Broker, or any group of the cluster that has
// committed offsets for topic or whose members consume it. Package broker
// asks it before the first Publish to a topic and refuses the Publish
// (ErrNoGroup) while it answers false: Kafka would keep the messages, but
// no group would ever be sure to read them.
func (b *Broker) HasGroup(ctx context.Context, topic string) (bool, error) {
	const op = "kafka: publish"
	if _, ok := b.grouped.Load(topic); ok {
		return true, nil
	}
	if err := checkTopic(op, topic); err != nil {
		return false, err
	}
	listed, listErr := b.adm.ListGroups(ctx) // may list the groups of the brokers that answered
	if listErr != nil {
		listErr = wrap(op, fmt.Errorf("listing consumer groups: %w", listErr))
	}
	groups := listed.Groups()
	if len(groups) == 0 {
		return false, listErr
	}
	found := false
offsets:
	for _, r := range b.adm.FetchManyOffsets(ctx, groups...) {
		if r.Err != nil {
			continue // a group we may not describe, or one being loaded
		}
		for _, o := range r.Fetched[topic] {
			if o.Err == nil && o.At >= 0 {
				found = true
				break offsets
			}
		}
	}
	if !found {
		described, err := b.adm.DescribeGroups(ctx, groups...)
		if err != nil && len(described) == 0 {
			return false, wrap(op, fmt.Errorf("describing consumer groups: %w", err))
		}
		for _, d := range described {
			if d.Err == nil && membersConsume(d, topic) {
				found = true
				break
			}
		}
	}
	if !found {
		return false, listErr // not found among the groups listed; an error when some were not
	}
	b.grouped.Store(topic, struct{}{})
	return true, nil
}

// PartitionLag is how far one group is behind on one partition.
type PartitionLag struct {
	Topic     string
	Partition int32
	// Start and End are the partition's log start and end offsets.
	Start, End int64
	// Committed is the group's committed offset, -1 when it has none.
	Committed int64
	// Lag is End - Committed. With no commit it is what the group will
	// read when it starts: End - Start (the whole retained log) under
	// StartOffset Earliest, 0 under Latest.
	Lag int64
	// Member is the client ID and host of the member consuming the
	// partition, "" when no member holds it.
	Member string
}

// Lag reports the lag of group on every partition of topic (log end offset
// minus committed offset), for metrics and the command-line tool.
func (b *Broker) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	const op = "kafka: lag"
	st, err := b.groupState(ctx, topic, group)
	if err != nil {
		return nil, wrap(op, err)
	}
	return st.lags, nil
}

var _ driver.BacklogReporter = (*Broker)(nil)

// Backlog reports group's backlog on topic for the queuekit command and
// metrics: Pending is the lag summed over partitions (Parts has each one and
// its owner) and Consumers the group's members. Kafka's lag already counts
// messages in flight and held back by a nack, so InFlight and Delayed are
// -1. A group that never committed lags by what it will read when it
// starts: the whole retained log (or nothing under StartOffset Latest). A
// missing topic is NotFound.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (driver.Backlog, error) {
	const op = "kafka: backlog"
	st, err := b.groupState(ctx, topic, group)
	if err != nil {
		return driver.Backlog{}, wrap(op, err)
	}
	bl := driver.Backlog{InFlight: -1, Delayed: -1, Consumers: len(st.members)}
	for _, l := range st.lags {
		bl.Pending += l.Lag
		bl.Parts = append(bl.Parts, driver.BacklogPart{Partition: l.Partition, Pending: l.Lag, Owner: l.Member})
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
	// Starved lists the partitions holding less than the mean divided by
	// SkewFactor: few keys, or keyless messages that were not spread.
	Starved []int32
	// Problems describes each finding in a sentence; empty when balanced.
	Problems []string
}

// DefaultSkewFactor is the skew factor CheckBalance uses when given 0.
const DefaultSkewFactor = 2.0

// CheckBalance inspects group on topic: it reports members with no
// partition (a group with more members than partitions keeps the extra ones
// idle), members holding more than one partition above another, partitions
// whose message count exceeds skewFactor times the mean (0 means
// DefaultSkewFactor), and partitions holding less than the mean divided by
// skewFactor. Skew is judged only once the topic holds at least 10 messages
// per partition.
func (b *Broker) CheckBalance(ctx context.Context, topic, group string, skewFactor float64) (*BalanceReport, error) {
	const op = "kafka: check balance"
	if skewFactor <= 0 {
		skewFactor = DefaultSkewFactor
	}
	st, err := b.groupState(ctx, topic, group)
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
			switch share := float64(m) / mean; {
			case share > skewFactor:
				r.Skewed = append(r.Skewed, int32(i))
				r.Problems = append(r.Problems, fmt.Sprintf("partition %d holds %d of %d messages (%.0f%%, %.1fx the mean): a hot key skews it", i, m, total, 100*float64(m)/float64(total), share))
			case share < 1/skewFactor:
				r.Starved = append(r.Starved, int32(i))
				r.Problems = append(r.Problems, fmt.Sprintf("partition %d holds %d of %d messages (%.1fx the mean): few keys map to it, or keyless messages were not spread over the partitions", i, m, total, share))
			}
		}
	}
	return r, nil
}

type groupState struct {
	lags     []PartitionLag     // by partition
	members  []string           // sorted
	assigned map[string][]int32 // member -> partitions of the topic
}

func (b *Broker) groupState(ctx context.Context, topic, group string) (*groupState, error) {
	if err := checkTopic("kafka", topic); err != nil {
		return nil, err
	}
	if err := checkGroup("kafka", group); err != nil {
		return nil, err
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
	st := &groupState{assigned: map[string][]int32{}}
	owner := map[int32]string{}
	if d, ok := described[group]; ok && d.Err == nil {
		for _, m := range d.Members {
			name := m.ClientID + "@" + m.ClientHost + "/" + m.MemberID
			st.members = append(st.members, name)
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
		} else if b.opts.StartOffset == Earliest {
			l.Lag = max(0, l.End-l.Start)
		}
		st.lags[p] = l
	}
	return st, nil
}
