package ingest

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// readiness answers /readyz: the broker answers its probe (if there is
// one), and no publish has failed for want of the broker in the last
// failFor.
type readiness struct {
	probe    func(ctx context.Context) error
	interval time.Duration
	failFor  time.Duration
	log      *slog.Logger

	failedAt atomic.Int64 // unix ns of the last unavailable publish; 0 after a success
	probing  atomic.Bool
	last     atomic.Pointer[probeResult]
}

type probeResult struct {
	at  time.Time
	err error
}

var errPublishesFailing = errors.New("publishes to the broker are failing")

// errProbe is what /readyz says when the probe fails: the probe's own error
// goes to the log only.
var errProbe = errors.New("the broker does not answer")

func (r *readiness) failed()    { r.failedAt.Store(time.Now().UnixNano()) }
func (r *readiness) succeeded() { r.failedAt.Store(0) }

// check returns nil when ready. The probe runs at most once per interval,
// by one caller at a time; the others get the previous result.
func (r *readiness) check(ctx context.Context) error {
	if at := r.failedAt.Load(); at != 0 && time.Since(time.Unix(0, at)) < r.failFor {
		return errPublishesFailing
	}
	if r.probe == nil {
		return nil
	}
	last := r.last.Load()
	if last != nil && time.Since(last.at) < r.interval {
		return last.err
	}
	if !r.probing.CompareAndSwap(false, true) {
		if last != nil {
			return last.err
		}
		return errProbe // the first probe is still running
	}
	defer r.probing.Store(false)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.interval)
	err := r.probe(pctx)
	cancel()
	res := &probeResult{at: time.Now()}
	if err != nil {
		res.err = errProbe
		r.log.LogAttrs(ctx, slog.LevelWarn, "ingest: readiness probe failed", slog.String("error", err.Error()))
	}
	r.last.Store(res)
	return res.err
}

// OpenProbe returns a readiness probe that opens a second connection to
// the broker at url and closes it: ready means a new connection to the
// broker can be made now. `queuekit serve` uses it. For adapters whose
// Open does no I/O (it only validates the URL), readiness then follows the
// outcome of recent publishes alone.
func OpenProbe(url string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		b, err := broker.Open(ctx, url)
		if err != nil {
			return err
		}
		return b.Close(context.WithoutCancel(ctx))
	}
}
