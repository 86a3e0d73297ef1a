package testenv

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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

// KafkaJS returns the node executable and the node_modules directory that
// holds kafkajs (internal/testenv/npm, installed there by make test with
// npm ci), for interop tests that run a kafkajs script with NODE_PATH set to
// that directory. Without node or kafkajs, t is skipped (failed under
// CI=true) with a message that says how to provide them.
func KafkaJS(t testing.TB) (node, nodePath string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		Unavailable(t, "kafkajs (Node.js)", errors.New("node is not on PATH"),
			"install Node.js 20 or newer (Debian: apt-get install nodejs npm), then run make test (npm ci in internal/testenv/npm)")
	}
	dir, err := npmDir()
	if err != nil {
		Unavailable(t, "kafkajs", err, "run the tests from inside the module")
	}
	nodePath = filepath.Join(dir, "node_modules")
	if _, err := os.Stat(filepath.Join(nodePath, "kafkajs", "package.json")); err != nil {
		Unavailable(t, "kafkajs", errors.New("kafkajs is not installed in internal/testenv/npm/node_modules"),
			"run make test, or npm ci --prefix internal/testenv/npm")
	}
	return node, nodePath
}
