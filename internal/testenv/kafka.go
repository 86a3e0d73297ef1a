package testenv

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// KafkaPartitions is the partition count of topics the in-process kfake
// cluster creates on its own (auto-created topics).
const KafkaPartitions = 3

// kafkaEnv is the in-process cluster shared by a test binary.
type kafkaEnv struct {
	once    sync.Once
	cluster *kfake.Cluster
	seeds   []string
	err     error
}

var kafkaShared kafkaEnv

// Kafka returns the seed brokers (host:port) of a Kafka-protocol cluster for
// tests: QUEUEKIT_KAFKA_BROKERS (comma-separated) when set, otherwise an
// in-process kfake cluster shared by every test of the binary. An
// unreachable QUEUEKIT_KAFKA_BROKERS skips t (fails it under CI=true).
func Kafka(t testing.TB) []string {
	t.Helper()
	if env := strings.TrimSpace(Env("QUEUEKIT_KAFKA_BROKERS", "")); env != "" {
		seeds := strings.Split(env, ",")
		if err := Reachable(seeds[0], 2*time.Second); err != nil {
			Unavailable(t, "Kafka", err, "unset QUEUEKIT_KAFKA_BROKERS to use the in-process kfake broker, or point it at a reachable cluster (host:port,...)")
		}
		return seeds
	}
	c := startKfake()
	if c.err != nil {
		Unavailable(t, "Kafka (kfake)", c.err, "kfake runs in-process from github.com/twmb/franz-go/pkg/kfake; it needs a free TCP port on 127.0.0.1, or set QUEUEKIT_KAFKA_BROKERS")
	}
	return c.seeds
}

// KafkaCluster returns the in-process kfake cluster that Kafka uses, for
// tests that drive the broker itself (compaction, injected faults), or nil
// when QUEUEKIT_KAFKA_BROKERS points at another cluster.
func KafkaCluster(t testing.TB) *kfake.Cluster {
	t.Helper()
	if Env("QUEUEKIT_KAFKA_BROKERS", "") != "" {
		return nil
	}
	Kafka(t)
	return kafkaShared.cluster
}

func startKfake() *kafkaEnv {
	e := &kafkaShared
	e.once.Do(func() {
		c, err := kfake.NewCluster(
			kfake.NumBrokers(1),
			kfake.AllowAutoTopicCreation(),
			kfake.DefaultNumPartitions(KafkaPartitions),
			// Short sessions let crash tests see a dead member leave fast.
			kfake.GroupMinSessionTimeout(500*time.Millisecond),
		)
		if err != nil {
			e.err = err
			return
		}
		e.cluster = c
		e.seeds = c.ListenAddrs()
		if len(e.seeds) == 0 {
			e.err = errors.New("kfake started without a listening address")
		}
	})
	return e
}
