package benchmeter

import (
	"sync"
	"testing"
)

// Split runs fn(count) on workers goroutines that share n messages (their
// counts differ by at most one) and fails b with the first error any
// returned.
func Split(b *testing.B, workers, n int, fn func(count int) error) {
	b.Helper()
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		count := n / workers
		if w < n%workers {
			count++
		}
		wg.Go(func() {
			if err := fn(count); err != nil {
				errc <- err
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
