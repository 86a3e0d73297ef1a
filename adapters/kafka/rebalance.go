package kafka

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// onFetched reads the delivery counts that the previous owner of each newly
// assigned partition left in its commit metadata.
func (s *Subscriber) onFetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	set := func(topic string, part int32, meta *string) {
		if meta == nil || topic == "" {
			return
		}
		prior := parseAttemptsMeta(*meta)
		if prior == nil {
			return
		}
		s.mu.Lock()
		p := s.parts[topicPart{topic, part}]
		if p == nil {
			p = s.newPartition(topicPart{topic, part})
			s.parts[topicPart{topic, part}] = p
		}
		s.mu.Unlock()
		p.mu.Lock()
		p.prior = prior
		p.mu.Unlock()
	}
	for _, t := range resp.Topics {
		for _, pr := range t.Partitions {
			set(t.Topic, pr.Partition, pr.Metadata)
		}
	}
	for _, g := range resp.Groups {
		for _, t := range g.Topics {
			name := t.Topic
			if name == "" {
				name = s.topicIDs[t.TopicID]
			}
			for _, pr := range t.Partitions {
				set(name, pr.Partition, pr.Metadata)
			}
		}
	}
	return nil
}

// onAssigned starts tracking newly assigned partitions.
func (s *Subscriber) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, parts := range assigned {
		for _, part := range parts {
			tp := topicPart{t, part}
			if p := s.parts[tp]; p == nil || p.dropped {
				s.parts[tp] = s.newPartition(tp)
			}
		}
	}
}

// onRevoked stops delivering the revoked partitions, waits (up to
// DrainTimeout) for their in-flight deliveries to be settled, and commits
// their watermark: never past a message that was not acknowledged.
func (s *Subscriber) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ps, closing := s.detach(revoked)
	if !closing {
		deadline := time.NewTimer(s.b.opts.DrainTimeout)
		defer deadline.Stop()
	drain:
		for _, p := range ps {
			if ch := p.drainCh(); ch != nil {
				select {
				case <-ch:
				case <-deadline.C:
					break drain
				case <-ctx.Done():
					break drain
				}
			}
		}
	}
	_ = s.commit(ctx, ps, true)
}

// onLost gives up partitions whose ownership is already gone: nothing can
// be committed for them.
func (s *Subscriber) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	ps, _ := s.detach(lost)
	for _, p := range ps {
		p.mu.Lock()
		p.gone = true
		p.mu.Unlock()
		p.wake()
	}
}

// detach removes the named partitions (all, when which is nil) from
// delivery: their backlog, ready and held deliveries are dropped
// un-committed.
func (s *Subscriber) detach(which map[string][]int32) ([]*partition, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ps []*partition
	if which == nil {
		for _, p := range s.parts {
			ps = append(ps, p)
		}
	} else {
		for t, parts := range which {
			for _, part := range parts {
				if p := s.parts[topicPart{t, part}]; p != nil {
					ps = append(ps, p)
				}
			}
		}
	}
	dropped := map[*partition]int{}
	for _, p := range ps {
		delete(s.parts, topicPart{p.topic, p.part})
		p.dropped = true
		if p.timer != nil {
			p.timer.Stop()
		}
		dropped[p] += len(p.held)
		clear(p.held)
		p.held = nil
		if p.paused {
			p.paused = false
			s.cl.ResumeFetchPartitions(map[string][]int32{p.topic: {p.part}})
		}
	}
	// Records polled for them and not yet delivered were never tracked:
	// their new owner fetches them again from the last commit.
	b := 0
	for _, f := range s.backlog {
		if !f.p.dropped {
			s.backlog[b] = f
			b++
		}
	}
	clear(s.backlog[b:])
	if s.backlog = s.backlog[:b]; b == 0 {
		s.backlog = nil
		s.wakePoller()
	}
	j := s.head
	for k := s.head; k < len(s.ready); k++ {
		x := s.ready[k]
		if x.p.dropped {
			dropped[x.p]++
		} else {
			s.ready[j] = x
			j++
		}
	}
	clear(s.ready[j:])
	s.ready = s.ready[:j]
	var total int64
	for p, n := range dropped {
		p.mu.Lock()
		p.revoking = true
		p.out -= n
		p.mu.Unlock()
		total += int64(n)
	}
	for _, p := range ps {
		if dropped[p] == 0 {
			p.mu.Lock()
			p.revoking = true
			p.mu.Unlock()
		}
	}
	s.release(total)
	return ps, s.closed
}
