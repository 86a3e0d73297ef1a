// Package depcheck enforces DESIGN.md's dependency rule: the core imports the
// standard library only, and a broker SDK appears only in its own adapter, so
// that a user who imports broker and one adapter compiles nothing else.
package depcheck

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/queuekit/queuekit"

// core packages may import the standard library and each other, nothing else.
var core = []string{
	"semantics",
	"broker",
	"broker/driver",
	"conformance",
	"conformance/faultproxy",
	"outbox",
	"ingest/limitreq",
	"adapters/memory",
	"internal/keytab",
	"middleware",
	"middleware/retry",
	"middleware/dedupe",
	"middleware/dedupe/dedupetest",
	"middleware/dlq",
	"middleware/timeout",
	"middleware/recover",
	"middleware/ratelimit",
}

// sdks maps each third-party SDK to the only queuekit package trees allowed
// to compile it.
var sdks = map[string][]string{
	"github.com/twmb/franz-go":           {"adapters/kafka", "adapters/all", "adapters/watermill", "cmd/", "examples/"},
	"github.com/rabbitmq/amqp091-go":     {"adapters/rabbitmq", "adapters/all", "adapters/watermill", "cmd/", "examples/"},
	"github.com/aws/aws-sdk-go-v2":       {"adapters/sqs", "adapters/all", "cmd/", "examples/"},
	"cloud.google.com/go/pubsub":         {"adapters/pubsub", "adapters/all", "cmd/", "examples/"},
	"google.golang.org/grpc":             {"adapters/pubsub", "adapters/all", "middleware/otel", "cmd/", "examples/"},
	"github.com/ThreeDotsLabs/watermill": {"adapters/watermill", "cmd/", "examples/"},
	"github.com/redis/go-redis":          {"middleware/dedupe/redisstore", "adapters/redisstreams", "adapters/all", "cmd/", "examples/"},
	"github.com/nats-io/nats.go":         {"adapters/nats", "adapters/all", "cmd/", "examples/"},
	"github.com/go-sql-driver/mysql":     {"cmd/", "examples/"},
	"github.com/jackc/pgx":               {"middleware/dedupe/pgstore", "outbox", "cmd/", "examples/"},
	"go.opentelemetry.io/otel":           {"middleware/otel", "adapters/pubsub", "adapters/all", "ingest", "cmd/", "examples/"},
}

// deps lists the non-standard packages that each of pkgs compiles (test
// files excluded: tests may import anything).
func deps(t *testing.T, pkgs ...string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, p := range pkgs {
		b, err := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{.ImportPath}}{{end}}`, p).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", p, err)
		}
		out[p] = strings.Fields(string(b))
	}
	return out
}

func TestCoreImportsStandardLibraryOnly(t *testing.T) {
	var pkgs []string
	for _, c := range core {
		pkgs = append(pkgs, module+"/"+c)
	}
	existing := listExisting(t, pkgs)
	for pkg, ds := range deps(t, existing...) {
		for _, d := range ds {
			if d != pkg && !isCore(d) {
				t.Errorf("%s imports %s: the core must import only the standard library and other core packages", pkg, d)
			}
		}
	}
}

func TestSDKsStayInTheirAdapters(t *testing.T) {
	all := listExisting(t, []string{module + "/..."})
	for pkg, ds := range deps(t, all...) {
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		for _, d := range ds {
			for sdk, allowed := range sdks {
				if strings.HasPrefix(d, sdk) && !allowedIn(rel, allowed) {
					t.Errorf("%s compiles %s (via %s); only %v may", rel, sdk, d, allowed)
				}
			}
		}
	}
}

func isCore(pkg string) bool {
	for _, c := range core {
		if pkg == module+"/"+c {
			return true
		}
	}
	return false
}

func allowedIn(rel string, allowed []string) bool {
	// Internal packages (test helpers, tools) cannot be imported by users,
	// so they compile into no user's program.
	if strings.HasPrefix(rel, "internal/") || strings.Contains(rel, "/internal/") {
		return true
	}
	for _, a := range allowed {
		if rel == a || strings.HasPrefix(rel, strings.TrimSuffix(a, "/")+"/") {
			return true
		}
	}
	return false
}

// listExisting expands patterns to the packages that exist now (test files
// excluded: tests may import anything).
func listExisting(t *testing.T, patterns []string) []string {
	t.Helper()
	var out []string
	for _, p := range patterns {
		b, err := exec.Command("go", "list", "-e", "-f", "{{if not .Error}}{{.ImportPath}}{{end}}", p).Output()
		if err != nil {
			continue
		}
		out = append(out, strings.Fields(string(b))...)
	}
	return out
}
