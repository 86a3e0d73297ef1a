package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
)

func runConformance(ctx context.Context, e *env, args []string) error {
	fs, url := flags(e, "conformance")
	only := fs.String("only", "", "comma-separated properties to run (default all: "+strings.Join(conformance.PropertyNames(), ", ")+")")
	report := fs.String("report", "", "write the JSON report to this file")
	messages := fs.Int("messages", 0, "messages for the bulk properties (default the suite's)")
	ackTimeout := fs.Duration("ack-timeout", 0, "ack timeout set on subscribers for crash redelivery (default the suite's)")
	timeout := fs.Duration("timeout", 0, "limit per property (default the suite's)")
	name := fs.String("name", "", "adapter name in the report (default the URL scheme)")
	if err := parse(fs, args); err != nil {
		return err
	}
	props := conformance.PropertyNames()
	if *only != "" {
		props = strings.Split(*only, ",")
		known := conformance.PropertyNames()
		for _, p := range props {
			if !slices.Contains(known, p) {
				return fmt.Errorf("%w: unknown property %q (known: %s)", errUsage, p, strings.Join(known, ", "))
			}
		}
	}
	h := conformance.Harness{
		Name:       *name,
		Open:       func(ctx context.Context) (*broker.Broker, error) { return broker.Open(ctx, *url) },
		Messages:   *messages,
		AckTimeout: *ackTimeout,
		Timeout:    *timeout,
	}
	if h.Name == "" {
		h.Name, _, _ = strings.Cut(*url, ":")
	}
	// One property at a time, each reported on stderr as it starts and
	// ends: a slow broker takes minutes over the whole suite.
	r := conformance.Report{Adapter: h.Name}
	start := time.Now()
	for i, p := range props {
		fmt.Fprintf(e.stderr, "conformance: [%d/%d] %s ... ", i+1, len(props), p)
		one, err := conformance.Check(ctx, h, p)
		if err != nil {
			fmt.Fprintln(e.stderr)
			return err
		}
		res := one.Results[0]
		fmt.Fprintf(e.stderr, "%s (%v)\n", res.Verdict, res.Elapsed.Round(time.Millisecond))
		r.Results = append(r.Results, res)
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted after %d of %d properties (%v)", i+1, len(props), time.Since(start).Round(time.Second))
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "property\tverdict\tpublished\thandled\tlost\tduplicates\treordered\ttime\tdetail\n")
	for _, res := range r.Results {
		detail := res.Detail // whole: it names the offending ids and what was seen
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%v\t%s\n", res.Property, res.Verdict, res.Published, res.Handled,
			res.Lost, res.Duplicates, res.Reordered, res.Elapsed.Round(time.Millisecond), detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if *report != "" {
		if err := r.WriteFile(*report); err != nil {
			return err
		}
	}
	if !r.OK() {
		return fmt.Errorf("%s failed: %s", h.Name, strings.Join(r.Verdicts()[conformance.Fail], ", "))
	}
	return nil
}
