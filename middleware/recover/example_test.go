package recover_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/queuekit/queuekit/broker"
	qkrecover "github.com/queuekit/queuekit/middleware/recover"
)

func ExampleNew() {
	h := qkrecover.New(qkrecover.Options{})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		var order map[string]int
		order["qty"] = 1 // a bug: nil map
		return nil
	}))
	err := h.Handle(context.Background(), &broker.Message{ID: "order-1"})
	var p *broker.PanicError
	fmt.Println(errors.As(err, &p), p.Value, len(p.Stack) > 0)
	// Output:
	// true assignment to entry in nil map true
}
