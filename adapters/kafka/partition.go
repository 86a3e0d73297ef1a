package kafka

import (
	"math/rand/v2"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Partition returns the partition, of n, that a message with key goes to:
// murmur2 of the key with the sign bit masked, modulo n — what the Java
// client's default partitioner, kafkajs' default partitioner, franz-go and
// this adapter's publisher compute. An empty key has no fixed partition
// (the publisher spreads keyless messages round robin); Partition returns
// -1 for it.
func Partition(key string, n int) int {
	if key == "" || n <= 0 {
		return -1
	}
	return int(murmur2(key)&0x7fffffff) % n
}

// partitioner is the publisher's kgo.Partitioner: a keyed record goes to
// Partition(key, n), whatever partitions are up (so a key never moves);
// keyless records take the writable partitions in turn, one record each,
// from a random start, so that keyless load spreads evenly however it is
// published (one by one or in one batch) and however many short-lived
// publishers there are. kgo's default, like Kafka's since 3.3, sticks to a
// partition for 64 KiB: a thousand small keyless messages all landed on
// one partition. The cost is that a keyless batch is split into one batch
// per partition (a produce request still carries them together).
type partitioner struct{}

func (partitioner) ForTopic(string) kgo.TopicPartitioner { return &topicPartitioner{next: -1} }

// topicPartitioner partitions one topic's records; kgo calls it for one
// record at a time.
type topicPartitioner struct{ next int }

func (*topicPartitioner) RequiresConsistency(r *kgo.Record) bool { return r.Key != nil }

func (p *topicPartitioner) Partition(r *kgo.Record, n int) int {
	if r.Key != nil {
		return int(murmur2(unsafe.String(unsafe.SliceData(r.Key), len(r.Key)))&0x7fffffff) % n
	}
	if p.next < 0 {
		p.next = rand.IntN(n)
	} else if p.next >= n {
		p.next = 0
	}
	i := p.next
	p.next++
	return i
}

// murmur2 is Kafka's Utils.murmur2 (seed 0x9747b28c).
func murmur2(b string) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for ; len(b) >= 4; b = b[4:] {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
