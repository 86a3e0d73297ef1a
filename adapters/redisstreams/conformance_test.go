package redisstreams_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared property suite against the Redis server
// of testenv.Redis, with the run's key prefix. Redis is a server other
// processes reach, so the crash properties run their consumers in child
// processes and kill them with SIGKILL. The topics have 4 shards, so that
// the per-key properties go through the shard leases.
func TestConformance(t *testing.T) {
	addr := testenv.Redis(t)
	conformance.Run(t, conformance.Harness{
		Name: "redisstreams",
		Open: func(ctx context.Context) (*broker.Broker, error) {
			return broker.Open(ctx, redisURL(t, "shards=4"))
		},
		NewTopic: func(property string) string {
			return "qk-" + strings.ReplaceAll(property, ".", "-") + "-" + runID + "-" + strconv.FormatInt(topicSeq.Add(1), 10)
		},
		AckTimeout:            time.Second,
		SharedAcrossProcesses: true,
		Addr:                  addr,
		OpenAt: func(ctx context.Context, at string) (*broker.Broker, error) {
			return broker.Open(ctx, strings.Replace(redisURL(t, "shards=4"), addr, at, 1))
		},
		Defaults: func(ctx context.Context) (*broker.Broker, error) {
			return broker.Open(ctx, "redis+streams://"+addr)
		},
	})
}

// TestConformanceRestart runs fault.broker-restart, which the shared server
// cannot take part in, against a redis-server of the test's own (an
// append-only file synced on every write): it is stopped and started again
// mid-stream and every message Publish confirmed must still be handled.
// With QUEUEKIT_CONFORMANCE_REPORT set, the verdict replaces the
// "unsupported" one TestConformance recorded in the report (RunOnly).
func TestConformanceRestart(t *testing.T) {
	srv := testenv.RedisServer(t)
	h := conformance.Harness{
		Name: "redisstreams",
		Open: func(ctx context.Context) (*broker.Broker, error) {
			return broker.Open(ctx, "redis+streams://"+srv.Addr+"/?shards=4")
		},
		AckTimeout: time.Second,
		Timeout:    30 * time.Second,
		Restart:    srv.Restart,
	}
	conformance.RunOnly(t, h, "fault.broker-restart")
}
