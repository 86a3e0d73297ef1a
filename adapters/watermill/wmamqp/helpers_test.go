package wmamqp

import (
	"sync"
	"testing"

	"github.com/queuekit/queuekit/internal/testenv"
)

// cleanup collects the queues and exchanges a test may declare and deletes
// them at the end, so that the shared server does not fill up.
type cleanup struct {
	mu                sync.Mutex
	queues, exchanges []string
	seen              map[string]bool
}

func (c *cleanup) add(queue, exchange string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	if queue != "" && !c.seen["q "+queue] {
		c.seen["q "+queue] = true
		c.queues = append(c.queues, queue)
	}
	if exchange != "" && !c.seen["x "+exchange] {
		c.seen["x "+exchange] = true
		c.exchanges = append(c.exchanges, exchange)
	}
}

func (c *cleanup) run(t testing.TB, url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	testenv.DeleteRabbitMQ(t, url, c.queues, c.exchanges)
}
