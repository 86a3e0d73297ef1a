package rabbitmq

import (
	"context"
	"fmt"
	"net"
	neturl "net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared property suite against the RabbitMQ
// server, with quorum queues (every capability claimed) and a 4 MiB
// message limit so that a message at the limit is tried too. At the end
// it deletes the topics the suite used with DeleteTopic, and checks that
// no queue of the run is left (issue 17, item 14: each run used to leave
// about 19 durable queues behind).
func TestConformance(t *testing.T) { conform(t, "rabbitmq", "") }

// TestConformanceClassic runs it with classic queues, which claim no
// attempt count and no dead-lettering (reported unsupported).
func TestConformanceClassic(t *testing.T) { conform(t, "rabbitmq-classic", "&queue_type=classic") }

func conform(t *testing.T, name, params string) {
	url := testenv.RabbitMQ(t)
	prefix := uniq("qk-conf")
	var declared recorder // only to check the cleanup: it does not use it
	var mu sync.Mutex
	var topics []string
	// Cleanups run last registered first: the check runs after the
	// deletion.
	t.Cleanup(func() {
		mu.Lock()
		made := slices.Clone(topics)
		mu.Unlock()
		checkNothingLeft(t, prefix, made, declared.names())
	})
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		var all []string
		for _, topic := range topics {
			all = append(all, topic, broker.DeadLetterTopic(topic))
		}
		deleteTopics(t, all...)
	})
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "5672")
	}
	openAt := func(ctx context.Context, addr, query string) (*broker.Broker, error) {
		at := *u
		at.Host = addr
		rb, err := Dial(ctx, at.String()+query, Options{OnDeclare: declared.add, Logger: quiet})
		if err != nil {
			return nil, err
		}
		return broker.New(rb), nil
	}
	conformance.Run(t, conformance.Harness{
		Name: name,
		Open: func(ctx context.Context) (*broker.Broker, error) {
			return openAt(ctx, addr, "?max_message_size=4194304"+params)
		},
		// The server is reachable from the consumer processes the crash
		// properties start and kill.
		SharedAcrossProcesses: true,
		Addr:                  addr,
		OpenAt: func(ctx context.Context, proxy string) (*broker.Broker, error) {
			return openAt(ctx, proxy, "?max_message_size=4194304"+params)
		},
		Defaults: func(ctx context.Context) (*broker.Broker, error) {
			return openAt(ctx, addr, "") // what a user who changes nothing gets
		},
		NewTopic: func(property string) string {
			mu.Lock()
			defer mu.Unlock()
			topic := fmt.Sprintf("%s-%s-%d", prefix, strings.ReplaceAll(property, ".", "-"), len(topics))
			topics = append(topics, topic)
			return topic
		},
		AckTimeout: time.Second,
		Timeout:    30 * time.Second,
	})
}

// checkNothingLeft fails t when a queue the run declared still exists
// (passive declaration) or, where rabbitmqctl works, when any queue whose
// name starts with the run's prefix does.
func checkNothingLeft(t *testing.T, prefix string, topics, declared []string) {
	if len(topics) == 0 {
		return // a consumer process of a crash property: the parent checks
	}
	if len(declared) == 0 {
		t.Errorf("the run declared no queue: the check below would prove nothing")
		return
	}
	rb, err := Dial(context.Background(), testenv.RabbitMQ(t), Options{Logger: quiet})
	if err != nil {
		t.Errorf("cleanup check: %v", err)
		return
	}
	defer rb.Close(context.Background())
	if left := existing(t, rb, declared); len(left) > 0 {
		t.Errorf("%d of the %d queues the run declared are left after DeleteTopic: %v", len(left), len(declared), left)
	}
	if left, ok := queuesWithPrefix(prefix); ok && len(left) > 0 {
		t.Errorf("rabbitmqctl lists %d queues of the run (prefix %s): %v", len(left), prefix, left)
	}
}
