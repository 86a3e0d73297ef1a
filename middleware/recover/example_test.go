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
		var order []int
		_ = order[3] // a bug: index out of range
		return nil
	}))
	err := h.Handle(context.Background(), &broker.Message{ID: "order-1"})
	var p *broker.PanicError
	fmt.Println(errors.As(err, &p), p.Value, len(p.Stack) > 0)
	// Output:
	// true runtime error: index out of range [3] with length 0 true
}
