package limitreq_test

import (
	"fmt"

	"github.com/queuekit/queuekit/ingest/limitreq"
)

// nginx's "limit_req_zone $key zone=api:10m rate=2r/s" with
// "limit_req zone=api burst=2": at one instant, a key's first request
// passes, the next two wait for the bucket to drain (500 ms each at 2r/s),
// and the fourth is over the burst.
func Example() {
	rate, _ := limitreq.ParseRate("2r/s")
	zone, _ := limitreq.NewZone("api", rate, 0)
	lim, _ := limitreq.New(limitreq.Limit{Zone: zone, Burst: 2})
	for i := 0; i < 4; i++ {
		r := lim.CheckAt(1000, []string{"client-1"})
		fmt.Println(r.Status, limitreq.ExcessString(r.Excess), r.Delay, r.RetryAfter)
	}
	// A second later the bucket has drained by two requests.
	r := lim.CheckAt(2000, []string{"client-1"})
	fmt.Println(r.Status, limitreq.ExcessString(r.Excess), r.Delay)
	// Output:
	// passed 0.000 0s 0s
	// delayed 1.000 500ms 0s
	// delayed 2.000 1s 0s
	// rejected 3.000 0s 500ms
	// delayed 1.000 500ms
}
