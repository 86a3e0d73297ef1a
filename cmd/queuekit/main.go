// Command queuekit declares, publishes, tails, redrives and measures over
// any broker queuekit has an adapter for, chosen by URL.
//
//	queuekit declare   -broker URL -topic T -group G [-group G2]...
//	queuekit publish   -broker URL -topic T [-key K] [-id ID] [-H k=v]... [-lines] [payload]
//	queuekit tail      -broker URL -topic T [-group G] [-n N] [-json]
//	queuekit redrive   -broker URL -topic T [-group G] [-n N] [-to TOPIC] [-idle 2s]
//	queuekit lag       -broker URL -topic T [-group G]
//	queuekit conformance -broker URL [-only p1,p2] [-report FILE] [-messages N]
//	queuekit serve     -broker URL -config FILE [-listen ADDR] [-tls-cert F -tls-key F] [-metrics ADDR]
//	queuekit outbox status -db URL [-table T] [-shards] [-json]
//	queuekit version
//
// The broker URL comes from -broker or QUEUEKIT_BROKER, else mem://, the
// embedded broker, which lives only as long as the process (so a publish to
// it vanishes when the command exits). Every adapter is compiled in.
//
// A group receives the messages published after it was declared, and a
// publish to a topic on which no group was declared fails on every broker:
// declare the groups first (queuekit declare), or start their consumers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	_ "github.com/queuekit/queuekit/adapters/all"
	"github.com/queuekit/queuekit/broker"
)

// command is one subcommand: its one-line summary and what runs it.
type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

var commands = map[string]command{
	"declare":     {"create a topic and its consumer groups (before the first publish)", runDeclare},
	"publish":     {"publish messages from arguments or stdin", runPublish},
	"tail":        {"print the messages of a topic as they arrive", runTail},
	"redrive":     {"move dead letters back to their original topic", runRedrive},
	"lag":         {"show how far a consumer group is behind", runLag},
	"conformance": {"run the conformance suite against a broker and print the verdicts", runConformance},
	"serve":       {"accept messages over HTTP and publish them, rate-limited like nginx", runServe},
	"outbox":      {"show a transactional outbox's depth, oldest message and relays (outbox status)", runOutbox},
	"version":     {"print the version, the commit it was built from and the adapters compiled in", runVersion},
}

// env is what a command reads and writes, so tests can run commands in
// process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	if err := run(ctx, e, os.Args[1:]); err != nil {
		if msg := err.Error(); !errors.Is(err, flag.ErrHelp) {
			if !strings.HasPrefix(msg, "queuekit") {
				msg = "queuekit: " + msg
			}
			fmt.Fprintln(os.Stderr, msg)
		}
		os.Exit(exitCode(err))
	}
}

// errUsage marks a mistake on the command line (exit status 2).
var errUsage = errors.New("usage")

// exitCode is 0 for help that was asked for (-h), 2 for a usage mistake, 1
// for any other error.
func exitCode(err error) int {
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	return 1
}

func run(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		usage(e.stderr)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(e.stdout)
		return nil
	case "help": // queuekit help [command]
		if len(args) == 1 {
			usage(e.stdout)
			return nil
		}
		args = []string{args[1], "-h"}
	case "-version", "--version":
		args[0] = "version"
	}
	c, ok := commands[args[0]]
	if !ok {
		usage(e.stderr)
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	return c.run(ctx, e, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: queuekit <command> [flags]   (queuekit <command> -h for its flags)")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "The broker is -broker URL, else $QUEUEKIT_BROKER, else mem:// (the embedded broker: it lives as long as the command).")
	fmt.Fprintln(w, "Adapters compiled in:", strings.Join(broker.Schemes(), ", "))
	fmt.Fprintln(w, "Declare groups before the first publish: a publish to a topic without a group fails on every broker.")
}

// flags starts a command's flag set with the -broker flag every command
// has. Its default is $QUEUEKIT_BROKER, else mem://, shown once in the
// command's help (without its password).
func flags(e *env, name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("queuekit "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	url := e.getenv("QUEUEKIT_BROKER")
	if url == "" {
		url = defaultBroker
	}
	fs.Var(&urlFlag{&url}, "broker", "broker `URL`, else $QUEUEKIT_BROKER")
	return fs, &url
}

// defaultBroker is the broker when neither -broker nor QUEUEKIT_BROKER says.
const defaultBroker = "mem://"

// urlFlag is a URL flag whose help shows its default without a password.
type urlFlag struct{ s *string }

func (f *urlFlag) String() string {
	if f == nil || f.s == nil {
		return ""
	}
	return broker.Redact(*f.s)
}

func (f *urlFlag) Set(v string) error { *f.s = v; return nil }

// hinted is an error whose message tells the command-line user what to do,
// in place of err's.
type hinted struct {
	err error
	msg string
}

func (h *hinted) Error() string { return h.msg }
func (h *hinted) Unwrap() error { return h.err }

// warnEphemeral warns, on stderr, that url is the embedded broker of this
// process, so that what the command does there vanishes with it.
func warnEphemeral(e *env, url, what string) {
	if strings.HasPrefix(url, "mem:") {
		fmt.Fprintf(e.stderr, "queuekit: warning: %s is the embedded broker of this process: %s (set -broker or $QUEUEKIT_BROKER to a broker's URL)\n", broker.Redact(url), what)
	}
}

// parse parses args, turning flag errors into usage errors.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	for _, name := range required {
		if f := fs.Lookup(name); f == nil || f.Value.String() == "" {
			return fmt.Errorf("%w: %s needs -%s", errUsage, fs.Name(), name)
		}
	}
	return nil
}

// open opens the broker and returns a function that closes it.
func open(ctx context.Context, url string) (*broker.Broker, func(), error) {
	b, err := broker.Open(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	return b, func() { _ = b.Close(context.WithoutCancel(ctx)) }, nil
}

// subscriberCloseTimeout bounds how long a command waits for a subscriber
// to close once it is done with it.
const subscriberCloseTimeout = time.Second

// closeSubscriber gives sub a moment to close — a Kafka group commits what
// the command acked and leaves — but not the 20s an SQS subscriber would
// wait for its long polls: those are abandoned, and what they receive is
// delivered again after its visibility timeout.
func closeSubscriber(ctx context.Context, e *env, cmd string, sub *broker.Subscriber) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), subscriberCloseTimeout)
	defer cancel()
	if err := sub.Close(cctx); err != nil && cctx.Err() == nil {
		fmt.Fprintf(e.stderr, "%s: closing the subscriber: %v\n", cmd, err)
	}
}
