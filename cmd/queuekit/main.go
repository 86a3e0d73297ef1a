// Command queuekit publishes, tails, redrives and measures over any broker
// queuekit has an adapter for, chosen by URL.
//
//	queuekit publish   -broker URL -topic T [-key K] [-id ID] [-H k=v]... [-lines] [payload]
//	queuekit tail      -broker URL -topic T [-group G] [-n N] [-json]
//	queuekit redrive   -broker URL -topic T [-n N] [-to TOPIC] [-idle 2s]
//	queuekit lag       -broker URL -topic T [-group G]
//	queuekit conformance -broker URL [-only p1,p2] [-report FILE] [-messages N]
//
// The broker URL comes from -broker or QUEUEKIT_BROKER (default mem://,
// which lives only as long as the process). Every adapter is compiled in.
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

	_ "github.com/queuekit/queuekit/adapters/all"
	"github.com/queuekit/queuekit/broker"
)

// command is one subcommand: its one-line summary and what runs it.
type command struct {
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

var commands = map[string]command{
	"publish":     {"publish messages from arguments or stdin", runPublish},
	"tail":        {"print the messages of a topic as they arrive", runTail},
	"redrive":     {"move dead letters back to their original topic", runRedrive},
	"lag":         {"show how far a consumer group is behind", runLag},
	"conformance": {"run the conformance suite against a broker and print the verdicts", runConformance},
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

func exitCode(err error) int {
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

func run(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "help" || args[0] == "--help" {
		usage(e.stderr)
		if len(args) == 0 {
			return fmt.Errorf("%w: no command given", errUsage)
		}
		return nil
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
	fmt.Fprintln(w, "The broker is -broker URL or $QUEUEKIT_BROKER; registered schemes:", strings.Join(broker.Schemes(), ", "))
}

// flags starts a command's flag set with the -broker flag every command has.
func flags(e *env, name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("queuekit "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	def := e.getenv("QUEUEKIT_BROKER")
	if def == "" {
		def = "mem://"
	}
	return fs, fs.String("broker", def, "broker URL (default $QUEUEKIT_BROKER, else mem://)")
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
func open(ctx context.Context, url string) (broker.Broker, func(), error) {
	b, err := broker.Open(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	return b, func() { _ = b.Close(context.WithoutCancel(ctx)) }, nil
}
