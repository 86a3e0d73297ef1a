package driver

import "sync/atomic"

// Settlement makes a Delivery's Ack and Nack idempotent. An adapter embeds
// one per delivery and asks it before talking to the broker:
//
//	func (d *delivery) Ack(ctx context.Context) error {
//		if first, err := d.settle.Ack(); !first {
//			return err
//		}
//		return d.ackOnBroker(ctx)
//	}
type Settlement struct{ state atomic.Uint32 }

const (
	unsettled uint32 = iota
	acked
	nacked
)

// Ack reports whether this is the first settlement. When it is not, err is
// nil after an earlier Ack and ErrAlreadySettled after an earlier Nack.
func (s *Settlement) Ack() (first bool, err error) { return s.settle(acked) }

// Nack is Ack's twin for Nack.
func (s *Settlement) Nack() (first bool, err error) { return s.settle(nacked) }

// Settled reports whether Ack or Nack was called.
func (s *Settlement) Settled() bool { return s.state.Load() != unsettled }

func (s *Settlement) settle(to uint32) (bool, error) {
	if s.state.CompareAndSwap(unsettled, to) {
		return true, nil
	}
	if s.state.Load() == to {
		return false, nil
	}
	return false, ErrAlreadySettled
}
