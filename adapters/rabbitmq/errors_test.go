package rabbitmq

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/internal/testenv"
)

// TestPreconditionFailedHints: of RabbitMQ's 406 answers, only a declare
// that met other arguments is explained as a topology mismatch; an unknown
// delivery tag (here: a message acked twice) is explained as what it is.
// Both errors come from the real server.
func TestPreconditionFailedHints(t *testing.T) {
	conn, err := amqp.Dial(testenv.RabbitMQ(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	channelError := func(do func(ch *amqp.Channel) error) error {
		t.Helper()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		closed := ch.NotifyClose(make(chan *amqp.Error, 1))
		if err := do(ch); err != nil {
			return err
		}
		select {
		case ae := <-closed:
			if ae == nil {
				t.Fatal("the channel closed without an error")
			}
			return ae
		case <-time.After(10 * time.Second):
			t.Fatal("RabbitMQ did not close the channel")
		}
		return nil
	}
	queue := uniq("hint")
	defer func() {
		if ch, err := conn.Channel(); err == nil {
			ch.QueueDelete(queue, false, false, false)
			ch.Close()
		}
	}()

	mismatch := channelError(func(ch *amqp.Channel) error {
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		_, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-max-length": int32(5)})
		return err
	})
	if got := wrap("rabbitmq: subscribe", mismatch).Error(); !strings.Contains(got, "declared with other arguments") {
		t.Errorf("inequivalent declare = %q, want the topology explanation", got)
	}

	twice := channelError(func(ch *amqp.Channel) error {
		if err := ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		var d amqp.Delivery
		for ok := false; !ok; {
			if d, ok, err = ch.Get(queue, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
		return d.Ack(false)
	})
	var ae *amqp.Error
	if !errors.As(twice, &ae) || ae.Code != amqp.PreconditionFailed || !strings.Contains(ae.Reason, "unknown delivery tag") {
		t.Fatalf("acking twice = %v, want RabbitMQ's 406 unknown delivery tag", twice)
	}
	got := wrap("rabbitmq: ack", twice).Error()
	if strings.Contains(got, "other arguments") || !strings.Contains(got, "settled already") {
		t.Errorf("unknown delivery tag = %q, want the settled-already explanation, not the topology one", got)
	}
}
