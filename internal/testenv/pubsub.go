package testenv

import (
	"sync"
	"testing"
	"time"
)

// DefaultPubSubProject is the project ID the Pub/Sub tests use against an
// emulator when QUEUEKIT_PUBSUB_PROJECT is unset. Emulators accept any ID.
const DefaultPubSubProject = "queuekit-test"

// pstestHow says how to provide a Pub/Sub server when pstestserver fails.
const pstestHow = "the tests build and run internal/testenv/pstestserver (pstest from cloud.google.com/go/pubsub/v2) with the go command; " +
	"check that `go build ./internal/testenv/pstestserver` works at the module root, or point PUBSUB_EMULATOR_HOST at a running emulator"

var pstestShared struct {
	once sync.Once
	srv  *Server
	err  error
}

// PubSub returns where the Pub/Sub tests run: the project ID and the
// emulator address (host:port).
//
//   - PUBSUB_EMULATOR_HOST set: that emulator (it must answer), project
//     QUEUEKIT_PUBSUB_PROJECT or DefaultPubSubProject.
//   - QUEUEKIT_PUBSUB_PROJECT set without PUBSUB_EMULATOR_HOST: the real
//     service in that project, with Application Default Credentials;
//     emulator is "".
//   - neither: a pstest server (cloud.google.com/go/pubsub/v2/pstest) in a
//     process of its own (internal/testenv/pstestserver, built without
//     -race: pstest has data races of its own) on 127.0.0.1, shared by
//     every test of the binary and ending with it. It forwards a message
//     nacked on its last attempt to the dead-letter topic once, as the
//     real service does (pstest alone forwards it again and again, and
//     holds back the rest of its ordering key): an emulator given by
//     PUBSUB_EMULATOR_HOST may not.
//
// When no server can be had, t is skipped (failed under CI=true) with a
// message that says how to provide one.
func PubSub(t testing.TB) (project, emulator string) {
	t.Helper()
	project = Env("QUEUEKIT_PUBSUB_PROJECT", "")
	if host := Env("PUBSUB_EMULATOR_HOST", ""); host != "" {
		if err := Reachable(host, 2*time.Second); err != nil {
			Unavailable(t, "Pub/Sub emulator at PUBSUB_EMULATOR_HOST="+host, err,
				"start it (`gcloud beta emulators pubsub start --host-port="+host+"`) or unset PUBSUB_EMULATOR_HOST to use a pstest server")
		}
		if project == "" {
			project = DefaultPubSubProject
		}
		return project, host
	}
	if project != "" {
		return project, "" // the real service
	}
	pstestShared.once.Do(func() {
		pstestShared.srv, pstestShared.err = StartServer("pstestserver")
	})
	if pstestShared.err != nil {
		Unavailable(t, "Pub/Sub server (pstestserver)", pstestShared.err, pstestHow)
	}
	return DefaultPubSubProject, pstestShared.srv.Addr
}

// PubSubServer starts a pstest server of t's own, whatever the environment
// says, and returns its address; it stops when t ends. args are
// pstestserver flags: "-fail-publish-attr", NAME refuses Publish requests
// holding a message with attribute NAME. For tests that need a fresh
// server, or one with server-side faults; the project ID is free.
func PubSubServer(t testing.TB, args ...string) (emulator string) {
	t.Helper()
	srv, err := StartServer("pstestserver", args...)
	if err != nil {
		Unavailable(t, "Pub/Sub server (pstestserver)", err, pstestHow)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stopping pstestserver: %v", err)
		}
	})
	return srv.Addr
}
