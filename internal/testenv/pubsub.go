package testenv

import (
	"errors"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
)

// DefaultPubSubProject is the project ID the Pub/Sub tests use against an
// emulator when QUEUEKIT_PUBSUB_PROJECT is unset. Emulators accept any ID.
const DefaultPubSubProject = "queuekit-test"

var (
	pstestOnce sync.Once
	pstestAddr string
	pstestErr  error
)

// PubSub returns where the Pub/Sub tests run: the project ID and the
// emulator address (host:port).
//
//   - PUBSUB_EMULATOR_HOST set: that emulator (it must answer), project
//     QUEUEKIT_PUBSUB_PROJECT or DefaultPubSubProject.
//   - QUEUEKIT_PUBSUB_PROJECT set without PUBSUB_EMULATOR_HOST: the real
//     service in that project, with Application Default Credentials;
//     emulator is "".
//   - neither: an in-process pstest server (cloud.google.com/go/pubsub/v2/pstest)
//     on 127.0.0.1, shared by every test of the binary.
//
// When the configured emulator does not answer, t is skipped (failed under
// CI=true) with a message that says how to provide one.
func PubSub(t testing.TB) (project, emulator string) {
	t.Helper()
	project = Env("QUEUEKIT_PUBSUB_PROJECT", "")
	if host := Env("PUBSUB_EMULATOR_HOST", ""); host != "" {
		if err := Reachable(host, 2*time.Second); err != nil {
			Unavailable(t, "Pub/Sub emulator at PUBSUB_EMULATOR_HOST="+host, err,
				"start it (`gcloud beta emulators pubsub start --host-port="+host+"`) or unset PUBSUB_EMULATOR_HOST to use the in-process pstest server")
		}
		if project == "" {
			project = DefaultPubSubProject
		}
		return project, host
	}
	if project != "" {
		return project, "" // the real service
	}
	pstestOnce.Do(func() {
		defer func() {
			if r := recover(); r != nil { // pstest panics when it cannot listen
				pstestErr = errors.New("pstest: " + errString(asError(r)))
			}
		}()
		srv := pstest.NewServerWithAddress("127.0.0.1:0")
		pstestAddr = srv.Addr
	})
	if pstestErr != nil {
		Unavailable(t, "in-process Pub/Sub server (pstest)", pstestErr,
			"free a local port for it, or point PUBSUB_EMULATOR_HOST at a running emulator")
	}
	return DefaultPubSubProject, pstestAddr
}

func asError(r any) error {
	if err, ok := r.(error); ok {
		return err
	}
	if s, ok := r.(string); ok {
		return errors.New(s)
	}
	return errors.New("panic")
}
