package wmamqp

import (
	"sync"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// cleanup collects the queues and exchanges a test may declare and deletes
// them at the end, so that the shared server does not fill up.
type cleanup struct {
	mu        sync.Mutex
	queues    map[string]bool
	exchanges map[string]bool
}

func (c *cleanup) add(queue, exchange string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.queues == nil {
		c.queues, c.exchanges = map[string]bool{}, map[string]bool{}
	}
	if queue != "" {
		c.queues[queue] = true
	}
	if exchange != "" {
		c.exchanges[exchange] = true
	}
}

func (c *cleanup) run(t testing.TB, url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queues)+len(c.exchanges) == 0 {
		return
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	del := func(kind, name string, fn func(*amqp.Channel) error) {
		ch, err := conn.Channel()
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		if err := fn(ch); err != nil {
			t.Logf("cleanup: delete %s %s: %v", kind, name, err)
		}
	}
	for q := range c.queues {
		del("queue", q, func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
	}
	for x := range c.exchanges {
		del("exchange", x, func(ch *amqp.Channel) error { return ch.ExchangeDelete(x, false, false) })
	}
}
