package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/queuekit/queuekit/ingest"
)

// runServe runs the HTTP ingest endpoint of package ingest in front of the
// broker: `queuekit serve -config ingest.json`.
func runServe(ctx context.Context, e *env, args []string) error {
	fs, brokerURL := flags(e, "serve")
	configPath := fs.String("config", "", "JSON config: tokens, rate-limit zones, limits, server (see package ingest)")
	listen := fs.String("listen", "", "address to listen on (overrides server.listen; default :8080)")
	tlsCert := fs.String("tls-cert", "", "PEM certificate: serve HTTPS (overrides server.tls_cert)")
	tlsKey := fs.String("tls-key", "", "PEM private key of -tls-cert (overrides server.tls_key)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on http://ADDR/metrics (such as 127.0.0.1:9464)")
	logFormat := fs.String("log", "json", "access log on stderr: json or text")
	hashToken := fs.Bool("hash-token", false, "read a token from stdin, print its sha256 for the config, and exit")
	newToken := fs.Bool("new-token", false, "print a new random token and its sha256, and exit")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *hashToken:
		line, err := bufio.NewReader(e.stdin).ReadString('\n')
		token := strings.TrimRight(line, "\r\n")
		if token == "" {
			return fmt.Errorf("%w: -hash-token reads the token from stdin, and got none (%v)", errUsage, err)
		}
		fmt.Fprintln(e.stdout, ingest.HashToken(token))
		return nil
	case *newToken:
		token, sum := ingest.NewToken()
		fmt.Fprintf(e.stdout, "token:  %s\nsha256: %s\n", token, sum)
		return nil
	case *configPath == "":
		return fmt.Errorf("%w: serve needs -config FILE (tokens and rate limits; see `go doc github.com/queuekit/queuekit/ingest`)", errUsage)
	}
	cfg, err := ingest.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Server.Listen = *listen
	}
	if *tlsCert != "" || *tlsKey != "" {
		cfg.Server.TLSCert, cfg.Server.TLSKey = *tlsCert, *tlsKey
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	var logger *slog.Logger
	switch *logFormat {
	case "json":
		logger = slog.New(slog.NewJSONHandler(e.stderr, nil))
	case "text":
		logger = slog.New(slog.NewTextHandler(e.stderr, nil))
	default:
		return fmt.Errorf("%w: -log is json or text, not %q", errUsage, *logFormat)
	}

	b, closeBroker, err := open(ctx, *brokerURL)
	if err != nil {
		return err
	}
	defer closeBroker()
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = pub.Close(context.WithoutCancel(ctx)) }() // after Serve: flushes what the handler published

	var mp metric.MeterProvider
	if *metricsAddr != "" {
		var stop func()
		if mp, stop, err = serveMetrics(e, *metricsAddr); err != nil {
			return err
		}
		defer stop()
	}
	h, err := ingest.New(ingest.Options{
		Publisher: pub, Config: cfg, Logger: logger, MeterProvider: mp,
		Probe: ingest.OpenProbe(*brokerURL),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return err
	}
	scheme := "http"
	if cfg.Server.TLSCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(e.stdout, "queuekit serve: listening on %s://%s, publishing to %s\n", scheme, ln.Addr(), brokerScheme(*brokerURL))
	srv := ingest.NewServer(h, cfg.Server)
	srv.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn) // TLS handshake and connection errors
	err = ingest.Serve(ctx, srv, ln, h, cfg.Server)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	fmt.Fprintln(e.stdout, "queuekit serve: shut down")
	return nil
}

// serveMetrics serves the meter provider's metrics in the Prometheus format
// on addr until stop is called.
func serveMetrics(e *env, addr string) (metric.MeterProvider, func(), error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(e.stdout, "queuekit serve: metrics on http://%s/metrics\n", ln.Addr())
	return mp, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = mp.Shutdown(ctx)
	}, nil
}

// brokerScheme names the broker without its credentials.
func brokerScheme(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "the broker"
	}
	if u.Host == "" {
		return u.Scheme + "://"
	}
	return u.Scheme + "://" + u.Host
}
