package broker

import "context"

// Handler handles one message. Returning nil acknowledges it (under
// at-least-once); an error asks for redelivery, after RetryAfter's delay when
// the error carries one.
type Handler interface {
	Handle(ctx context.Context, msg *Message) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, msg *Message) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, msg *Message) error { return f(ctx, msg) }

// Middleware wraps a Handler with behaviour of its own.
type Middleware func(Handler) Handler

// Chain composes middleware so that the first one is the outermost:
// Chain(a, b)(h) handles a message as a(b(h)).
func Chain(mws ...Middleware) Middleware {
	return func(h Handler) Handler {
		for i := len(mws) - 1; i >= 0; i-- {
			if mws[i] != nil {
				h = mws[i](h)
			}
		}
		return h
	}
}

// Sender is what publishes: *Publisher, and decorators of one (such as the
// otel middleware's tracing publisher). Middleware that publishes (dlq,
// redrive) takes a Sender.
type Sender interface {
	Publish(ctx context.Context, topic string, msgs ...*Message) error
}

var _ Sender = (*Publisher)(nil)
