package driver

import "context"

// FillBatch implements BatchReceiver.ReceiveBatch for an adapter that has a
// blocking receive and a way to take a delivery that is already waiting: it
// blocks in receive for the first delivery, then adds what ready hands out
// without blocking, up to len(buf). ready returns false when nothing waits
// (or the subscriber is closing: the next receive reports that).
func FillBatch(ctx context.Context, buf []Delivery, receive func(context.Context) (Delivery, error), ready func() (Delivery, bool)) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	d, err := receive(ctx)
	if err != nil {
		return 0, err
	}
	buf[0] = d
	n := 1
	for n < len(buf) {
		d, ok := ready()
		if !ok {
			break
		}
		buf[n] = d
		n++
	}
	return n, nil
}

// Ready returns a FillBatch ready function that takes a delivery from ch
// when one is waiting.
func Ready[D Delivery](ch <-chan D) func() (Delivery, bool) {
	return func() (Delivery, bool) {
		select {
		case d := <-ch:
			return d, true
		default:
			return nil, false
		}
	}
}
