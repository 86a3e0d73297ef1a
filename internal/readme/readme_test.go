package readme

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/rabbitmq" // amqp://, for the cleanup of the shared server
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// snippet is one fenced block of README.md.
type snippet struct {
	lang string
	line int // of its first line of code
	code string
}

// readme returns the module root and README.md's fenced blocks.
func readme(t *testing.T) (root string, blocks []snippet) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var cur *snippet
	var body []string
	for i, line := range strings.Split(string(text), "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &snippet{lang: strings.TrimSpace(strings.TrimPrefix(line, "```")), line: i + 2}
			body = nil
		case cur != nil && strings.TrimSpace(line) == "```":
			cur.code = strings.Join(body, "\n") + "\n"
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			body = append(body, line)
		}
	}
	if cur != nil {
		t.Fatalf("README.md:%d: fenced block never closed", cur.line-1)
	}
	return root, blocks
}

// imports maps the package names the snippets use to import paths.
var imports = map[string]string{
	"cmp": "cmp", "context": "context", "errors": "errors", "fmt": "fmt", "log": "log", "os": "os",
	"strings": "strings", "testing": "testing", "time": "time", "url": "net/url", "sql": "database/sql",
	"broker":      "github.com/queuekit/queuekit/broker",
	"driver":      "github.com/queuekit/queuekit/broker/driver",
	"semantics":   "github.com/queuekit/queuekit/semantics",
	"conformance": "github.com/queuekit/queuekit/conformance",
	"middleware":  "github.com/queuekit/queuekit/middleware",
	"dedupe":      "github.com/queuekit/queuekit/middleware/dedupe",
	"dlq":         "github.com/queuekit/queuekit/middleware/dlq",
	"retry":       "github.com/queuekit/queuekit/middleware/retry",
	"qkotel":      "github.com/queuekit/queuekit/middleware/otel",
	"pgstore":     "github.com/queuekit/queuekit/middleware/dedupe/pgstore",
	"redisstore":  "github.com/queuekit/queuekit/middleware/dedupe/redisstore",
	"outbox":      "github.com/queuekit/queuekit/outbox",
	"ingest":      "github.com/queuekit/queuekit/ingest",
	"memory":      "github.com/queuekit/queuekit/adapters/memory",
	"kafka":       "github.com/queuekit/queuekit/adapters/kafka",
	"rabbitmq":    "github.com/queuekit/queuekit/adapters/rabbitmq",
	"sqs":         "github.com/queuekit/queuekit/adapters/sqs",
	"pubsub":      "github.com/queuekit/queuekit/adapters/pubsub",
	"kgo":         "github.com/twmb/franz-go/pkg/kgo",
	"pgx":         "github.com/jackc/pgx/v5",
	"pgxpool":     "github.com/jackc/pgx/v5/pgxpool",
}

// free are the values the README's fragments use without defining
// them, as a reader would have them at hand: each a package-level var of
// the wrapper, with the packages its type needs.
var free = map[string]struct{ typ, pkgs string }{
	"ctx":     {"context.Context", "context"},
	"b":       {"*broker.Broker", "broker"},
	"pub":     {"*broker.Publisher", "broker"},
	"sub":     {"*broker.Subscriber", "broker"},
	"handler": {"broker.Handler", "broker"},
	"db":      {"*sql.DB", "sql"},
	"pool":    {"*pgxpool.Pool", "pgxpool"},
	"id":      {"string", ""},
	"total":   {"float64", ""},
	"event":   {"[]byte", ""},
	"dial":    {"func(ctx context.Context, addr string, prefetch int) (driver.Broker, error)", "context driver"},
}

// program turns a Go snippet into a main package: as it is when it is one
// (package main), else its declarations (funcs) or statements (wrapped in
// func main) with the imports it needs and the context values it uses,
// and each variable its top-level statements define used once more, as the
// rest of a real program would.
func program(s snippet) (string, error) {
	if strings.HasPrefix(strings.TrimSpace(s.code), "package ") {
		return s.code, nil
	}
	fset := token.NewFileSet()
	src := "package main\n\n" + s.code
	file, err := parser.ParseFile(fset, "", src, 0)
	topLevel := err == nil
	if !topLevel {
		src = "package main\n\nfunc main() {\n" + s.code + "}\n"
		if file, err = parser.ParseFile(fset, "", src, 0); err != nil {
			return "", fmt.Errorf("neither declarations nor statements: %v", err)
		}
	}
	need := map[string]bool{}
	var vars []string
	for _, id := range file.Unresolved { // the parser's resolver finds the free names
		name := id.Name
		switch {
		case imports[name] != "":
			need[name] = true
		case free[name].typ != "":
			if !slices.Contains(vars, name) {
				vars = append(vars, name)
				for _, p := range strings.Fields(free[name].pkgs) {
					need[p] = true
				}
			}
		case types.Universe.Lookup(name) != nil:
		default:
			return "", fmt.Errorf("uses %s, which it does not define and the test does not know (add it to imports or free)", name)
		}
	}
	var out strings.Builder
	out.WriteString("package main\n\nimport (\n")
	names := make([]string, 0, len(need))
	for n := range need {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&out, "\t%s %q\n", n, imports[n])
	}
	out.WriteString(")\n\n")
	sort.Strings(vars)
	for _, v := range vars {
		fmt.Fprintf(&out, "var %s %s\n", v, free[v].typ)
	}
	if topLevel {
		fmt.Fprintf(&out, "\n//line README.md:%d\n", s.line)
		out.WriteString(s.code)
		out.WriteString("\nfunc main() {}\n")
		return out.String(), nil
	}
	fmt.Fprintf(&out, "func main() {\n//line README.md:%d\n", s.line)
	out.WriteString(s.code)
	var defined []string
	for _, st := range file.Decls[len(file.Decls)-1].(*ast.FuncDecl).Body.List {
		if as, ok := st.(*ast.AssignStmt); ok && as.Tok == token.DEFINE {
			for _, l := range as.Lhs {
				if id, ok := l.(*ast.Ident); ok && id.Name != "_" && !slices.Contains(defined, id.Name) {
					defined = append(defined, id.Name)
				}
			}
		}
	}
	for _, d := range defined {
		fmt.Fprintf(&out, "\t_ = %s\n", d)
	}
	out.WriteString("}\n")
	return out.String(), nil
}

// overlay writes the programs into an overlay of the module (package
// internal/readme/snippetN each), so that they build against this checkout
// without a file in the source tree, and returns the overlay's path and the
// packages.
func overlay(t *testing.T, root string, progs map[int]string) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	o := struct{ Replace map[string]string }{map[string]string{}}
	var pkgs []string
	for i, src := range progs {
		f := filepath.Join(dir, fmt.Sprintf("snippet%d.go", i))
		if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		pkg := fmt.Sprintf("internal/readme/snippet%d", i)
		o.Replace[filepath.Join(root, pkg, "main.go")] = f
		pkgs = append(pkgs, "./"+pkg)
	}
	sort.Strings(pkgs)
	js, _ := json.Marshal(o)
	path := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(path, js, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, pkgs
}

func goCommand(t *testing.T) string {
	t.Helper()
	g, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH: %v", err)
	}
	return g
}

// TestGoSnippetsCompile builds every ```go block of README.md, verbatim:
// a whole program as it is, a fragment inside a main package that gives it
// its imports and the values it uses without defining them (ctx, b, pub,
// sub, handler, db, ...). Compile errors point at README.md's lines.
func TestGoSnippetsCompile(t *testing.T) {
	root, blocks := readme(t)
	progs := map[int]string{}
	for i, s := range blocks {
		if s.lang != "go" {
			continue
		}
		src, err := program(s)
		if err != nil {
			t.Errorf("README.md:%d: %v", s.line, err)
			continue
		}
		progs[i] = src
	}
	if len(progs) < 5 {
		t.Fatalf("README.md has %d Go snippets; expected the API's main flows at least", len(progs))
	}
	ov, pkgs := overlay(t, root, progs)
	cmd := exec.Command(goCommand(t), append([]string{"build", "-overlay", ov, "-o", os.DevNull}, pkgs...)...)
	if len(pkgs) > 1 {
		cmd = exec.Command(goCommand(t), append([]string{"build", "-overlay", ov}, pkgs...)...)
	}
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("README.md's Go snippets do not compile: %v\n%s", err, out)
	}
}

// flowBrokers are the brokers the README's flows run on, by name: the URL
// the test gives as QUEUEKIT_BROKER ("" leaves it unset: mem://).
var flowBrokers = []struct {
	name   string
	url    func(t *testing.T) string
	cli    bool // the command-line flow too (mem:// dies with each command)
	shared bool // a server other runs used: delete the README's topics first
}{
	{"mem", func(*testing.T) string { return "" }, false, false},
	{"rabbitmq", func(t *testing.T) string { return testenv.RabbitMQ(t) }, true, true},
	{"kafka", func(t *testing.T) string { return "kafka://" + strings.Join(testenv.Kafka(t), ",") }, true, false},
	// wait_time=1s: a subscriber that closes within its deadline lets its
	// long polls end instead of abandoning them (a message SQS hands an
	// abandoned poll stays hidden for the visibility timeout, 30s).
	{"sqs", func(t *testing.T) string { return "sqs://?wait_time=1s&endpoint=" + url.QueryEscape(testenv.SQS(t)) }, true, false},
	{"pubsub", func(t *testing.T) string {
		project, emulator := testenv.PubSub(t)
		if emulator == "" {
			return "gcppubsub://" + project
		}
		return "gcppubsub://" + project + "?emulator=" + emulator
	}, true, false},
}

// TestFlows runs README.md's flows unchanged on each broker (its URL in
// QUEUEKIT_BROKER): the program of "Publish and consume", then the
// commands of "Command line" (all but go install, conformance and outbox,
// which have tests of their own), each built from this checkout. They use
// the README's names (topic orders, groups billing, queuekit-tail, ops):
// on a shared server (RabbitMQ) the test deletes those topics before and
// after; the others are the test binary's own (kfake, fauxqs, pstest).
func TestFlows(t *testing.T) {
	root, blocks := readme(t)
	var prog string
	var cli []string
	for _, s := range blocks {
		switch {
		case s.lang == "go" && prog == "" && strings.HasPrefix(strings.TrimSpace(s.code), "package main"):
			prog = s.code
		case s.lang == "sh" && strings.Contains(s.code, "queuekit declare") && cli == nil:
			cli = strings.Split(strings.TrimSpace(s.code), "\n")
		}
	}
	if prog == "" || cli == nil {
		t.Fatal("README.md lacks the program of Publish and consume, or the command-line block")
	}
	bin := t.TempDir()
	ov, pkgs := overlay(t, root, map[int]string{0: prog})
	build := exec.Command(goCommand(t), "build", "-overlay", ov, "-o", filepath.Join(bin, "readme-program"), pkgs[0])
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the program of Publish and consume: %v\n%s", err, out)
	}
	build = exec.Command(goCommand(t), "build", "-o", filepath.Join(bin, "queuekit"), "./cmd/queuekit")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/queuekit: %v\n%s", err, out)
	}

	for _, bk := range flowBrokers {
		t.Run(bk.name, func(t *testing.T) {
			t.Parallel()
			u := bk.url(t)
			if bk.shared {
				forget(t, u, "orders", "orders.dlq")
				t.Cleanup(func() { forget(t, u, "orders", "orders.dlq") })
			}
			out := runFlow(t, bin, u, "readme-program")
			if want := `billing order-42 order.created: {"total":12.5}`; !strings.Contains(out, want) {
				t.Errorf("the program printed %q, want %q", out, want)
			}
			if !bk.cli {
				return
			}
			for _, line := range cli {
				args := shellWords(t, line)
				if len(args) == 0 || args[0] != "queuekit" || slices.Contains([]string{"conformance", "outbox"}, args[1]) {
					continue // go install, export, and the commands with tests of their own
				}
				start := time.Now()
				out, err := runCommand(bin, u, args)
				t.Logf("%s: %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
				switch {
				case args[1] == "lag" && bk.name == "pubsub":
					if err == nil || !strings.Contains(out, "unsupported") {
						t.Errorf("%s: %v, want unsupported (Pub/Sub does not tell a backlog)\n%s", line, err, out)
					}
				case err != nil:
					t.Errorf("%s: %v\n%s", line, err, out)
				case args[1] == "tail" && !strings.Contains(out, `"topic":"orders"`):
					// The next message of group queuekit-tail: order-1, or on
					// Kafka (start=earliest) the program's order-42.
					t.Errorf("%s printed no message:\n%s", line, out)
				}
			}
		})
	}
}

// runFlow runs the program name from bin with QUEUEKIT_BROKER=u (unset
// when empty) and returns its output.
func runFlow(t *testing.T, bin, u, name string) string {
	t.Helper()
	start := time.Now()
	out, err := runCommand(bin, u, []string{name})
	t.Logf("%s: %v", name, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return out
}

// runCommand runs args[0] from bin, with bin first on PATH, within a
// minute.
func runCommand(bin, u string, args []string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, args[0]), args[1:]...)
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if u != "" {
		cmd.Env = append(cmd.Env, "QUEUEKIT_BROKER="+u)
	} else {
		cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "QUEUEKIT_BROKER=") })
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after a minute: %w", err)
	}
	return out.String(), err
}

// shellWords splits a README shell line into words: single and double
// quotes group, # starts a comment. Anything fancier fails the test.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '#' && !inWord:
			return words
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'' || c == '"':
			end := strings.IndexByte(line[i+1:], c)
			if end < 0 {
				t.Fatalf("unbalanced quote in README line %q", line)
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case strings.ContainsRune("$`\\|&;<>", rune(c)):
			if strings.HasPrefix(line, "export ") || strings.HasPrefix(line, "go ") {
				return nil // not run: the test sets QUEUEKIT_BROKER and builds the command itself
			}
			t.Fatalf("README line %q needs a real shell (%q): keep the command-line flow to plain commands", line, c)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// forget deletes topics and their groups on the broker at u, where the
// adapter can (RabbitMQ queues, ...): the README's names are fixed, and a
// shared server keeps what an earlier run left.
func forget(t *testing.T, u string, topics ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := broker.Open(ctx, u)
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	defer b.Close(context.Background())
	var d interface {
		DeleteTopic(ctx context.Context, topic string) error
	}
	if !b.As(&d) {
		return
	}
	for _, topic := range topics {
		if err := d.DeleteTopic(ctx, topic); err != nil && !errors.Is(err, broker.ErrClosed) {
			t.Logf("cleanup of %s: %v", topic, err)
		}
	}
}

// TestShellWords checks the little parser the flows rely on.
func TestShellWords(t *testing.T) {
	for line, want := range map[string][]string{
		`queuekit publish -topic orders -key order-1 -H type=created '{"total":3}'`: {"queuekit", "publish", "-topic", "orders", "-key", "order-1", "-H", "type=created", `{"total":3}`},
		`queuekit lag -topic orders   # a comment`:                                  {"queuekit", "lag", "-topic", "orders"},
		`export QUEUEKIT_BROKER=amqp://x`:                                           {"export", "QUEUEKIT_BROKER=amqp://x"},
	} {
		if got := shellWords(t, line); !slices.Equal(got, want) {
			t.Errorf("shellWords(%q) = %q, want %q", line, got, want)
		}
	}
}
