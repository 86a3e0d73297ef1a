package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/ingest/limitreq"
	"github.com/queuekit/queuekit/semantics"
)

// Publisher is what a Handler publishes through. Every queuekit broker's
// publisher is one; so is anything with the same Publish method, such as a
// publisher wrapped by middleware/otel.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...*broker.Message) error
}

// Pinger is an optional interface of a Publisher: when Options.Probe is
// nil, /readyz calls Ping to ask whether the broker answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Options configure a Handler. Publisher is required.
type Options struct {
	// Publisher receives every accepted message.
	Publisher Publisher
	// Config holds the tokens, rate limits and size limits. It is
	// validated by New.
	Config Config
	// Logger receives one access-log record per request at level Info
	// (5xx at Warn). Default slog.Default(). The Authorization header and
	// the token never appear in it; the token's name does.
	Logger *slog.Logger
	// MeterProvider provides the meters; default otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Probe tells /readyz whether the broker answers (OpenProbe makes one
	// from a broker URL). When nil, the Publisher's Ping is used if it has
	// one; otherwise readiness follows the outcome of recent publishes.
	Probe func(ctx context.Context) error
	// ProbeInterval is how long a probe's result is reused, and its
	// timeout. Default 2s.
	ProbeInterval time.Duration
}

// Handler is the HTTP ingest endpoint: an http.Handler that accepts
// messages over HTTP and publishes them (see the package documentation for
// the protocol). It is safe for concurrent use.
type Handler struct {
	pub    Publisher
	cfg    Config
	mux    *http.ServeMux
	tokens map[[sha256.Size]byte]*grant
	anon   *grant

	limiter  *limitreq.Limiter
	zoneKeys []zoneKey
	sem      chan struct{}
	delayed  atomic.Int64

	log   *slog.Logger
	m     *metrics
	ready *readiness

	mu       sync.Mutex
	active   int           // requests past the in-flight gate
	draining chan struct{} // closed by Shutdown
	idle     chan struct{} // closed when draining and active reaches 0
	closing  bool
}

// grant is what a token (or anonymity) may do.
type grant struct {
	name   string
	topics []string
}

// anonymousKey is the "token" zone key of requests without a token.
const anonymousKey = "anonymous"

// New returns a Handler. It fails with an InvalidArgument error when the
// options are invalid.
func New(opts Options) (*Handler, error) {
	if opts.Publisher == nil {
		return nil, broker.Errorf(semantics.InvalidArgument, "ingest: new", "Options.Publisher is required")
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	cfg := opts.Config.withDefaults()
	h := &Handler{
		pub:      opts.Publisher,
		cfg:      cfg,
		tokens:   make(map[[sha256.Size]byte]*grant, len(cfg.Tokens)),
		sem:      make(chan struct{}, cfg.MaxInFlight),
		log:      opts.Logger,
		draining: make(chan struct{}),
		idle:     make(chan struct{}),
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	for _, t := range cfg.Tokens {
		var sum [sha256.Size]byte
		b, _ := hex.DecodeString(t.SHA256)
		copy(sum[:], b)
		h.tokens[sum] = &grant{name: t.Name, topics: t.Topics}
	}
	if len(cfg.AnonymousTopics) > 0 {
		h.anon = &grant{name: anonymousKey, topics: cfg.AnonymousTopics}
	}
	limits := make([]limitreq.Limit, len(cfg.Zones))
	for i, z := range cfg.Zones {
		rate, _ := limitreq.ParseRate(z.Rate)
		zone, err := limitreq.NewZone(z.Name, rate, z.MaxKeys)
		if err != nil {
			return nil, broker.Errorf(semantics.InvalidArgument, "ingest: new", "%v", err)
		}
		limits[i] = limitreq.Limit{Zone: zone, Burst: z.Burst, NoDelay: z.NoDelay, Delay: z.Delay}
		k, _ := parseZoneKey(z.Key)
		h.zoneKeys = append(h.zoneKeys, k)
	}
	var err error
	if h.limiter, err = limitreq.New(limits...); err != nil {
		return nil, broker.Errorf(semantics.InvalidArgument, "ingest: new", "%v", err)
	}
	if h.m, err = newMetrics(opts.MeterProvider); err != nil {
		return nil, err
	}
	probe := opts.Probe
	if p, ok := opts.Publisher.(Pinger); ok && probe == nil {
		probe = p.Ping
	}
	interval := opts.ProbeInterval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	h.ready = &readiness{probe: probe, interval: interval, failFor: time.Duration(cfg.RetryAfter), log: h.log}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/topics/{topic}/messages", func(w http.ResponseWriter, r *http.Request) { h.publish(w, r, false) })
	mux.HandleFunc("POST /v1/topics/{topic}/batch", func(w http.ResponseWriter, r *http.Request) { h.publish(w, r, true) })
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("/", h.notFound)
	h.mux = mux
	return h, nil
}

// ServeHTTP routes the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Shutdown stops the handler taking messages — new publish requests and
// those still waiting in a delaying zone get 503, and /readyz reports not
// ready — and waits until every request already reading its body or
// publishing has been answered, or ctx ends. Use it before (or with)
// http.Server.Shutdown, which waits for the connections.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	if !h.closing {
		h.closing = true
		close(h.draining)
		if h.active == 0 {
			close(h.idle)
		}
	}
	h.mu.Unlock()
	select {
	case <-h.idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// enter admits a request to the publishing section unless draining.
func (h *Handler) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.active++
	return true
}

func (h *Handler) leave() {
	h.mu.Lock()
	h.active--
	if h.closing && h.active == 0 {
		close(h.idle)
	}
	h.mu.Unlock()
}

func (h *Handler) isDraining() bool {
	select {
	case <-h.draining:
		return true
	default:
		return false
	}
}

// record is what the access log and the metrics learn of a publish request.
type record struct {
	start   time.Time
	elapsed time.Duration
	status  int
	reason  string
	message string // for the access log: why, without secrets
	topic   string
	token   string
	msgs    int
	bytes   int64
	id      string
	limit   *limitreq.Result
	err     error // the broker's error, for the log
}

// publish serves both publish routes.
func (h *Handler) publish(w http.ResponseWriter, r *http.Request, batch bool) {
	rec := &record{start: time.Now()}
	defer h.finish(r, rec)
	if k := r.Header.Get(HeaderIdempotencyKey); validID(k) == nil {
		rec.id = k // logged from the start: it is how a client traces its retries
	}
	if h.isDraining() {
		h.fail(w, rec, http.StatusServiceUnavailable, ReasonShuttingDown, "the server is shutting down")
		return
	}
	rec.topic = r.PathValue("topic")
	if err := validTopic(rec.topic); err != nil {
		h.fail(w, rec, http.StatusBadRequest, ReasonMalformed, err.Error())
		return
	}
	g, status, msg := h.authenticate(r)
	if g == nil {
		if status == http.StatusUnauthorized {
			challenge := `Bearer realm="queuekit"`
			if msg == msgInvalidToken {
				challenge += `, error="invalid_token"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
		}
		h.fail(w, rec, status, ReasonUnauthorized, msg)
		return
	}
	rec.token = g.name
	if !matchTopic(g.topics, rec.topic) {
		h.fail(w, rec, http.StatusForbidden, ReasonForbidden, fmt.Sprintf("token %q may not publish to topic %q", g.name, rec.topic))
		return
	}
	if !h.limit(w, r, rec, g) {
		return
	}

	select {
	case h.sem <- struct{}{}:
	default:
		h.fail(w, rec, http.StatusServiceUnavailable, ReasonOverloaded, "too many requests in flight")
		return
	}
	defer func() { <-h.sem }()
	if !h.enter() {
		h.fail(w, rec, http.StatusServiceUnavailable, ReasonShuttingDown, "the server is shutting down")
		return
	}
	defer h.leave()
	h.m.inFlight.Add(r.Context(), 1)
	defer h.m.inFlight.Add(context.WithoutCancel(r.Context()), -1)

	var msgs []*broker.Message
	var perr *requestError
	if batch {
		msgs, perr = h.readBatch(w, r, rec)
	} else {
		msgs, perr = h.readSingle(w, r, rec)
	}
	if perr != nil {
		h.fail(w, rec, perr.status, perr.reason, perr.msg)
		return
	}
	rec.msgs = len(msgs)

	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), time.Duration(h.cfg.PublishTimeout))
	err := h.pub.Publish(ctx, rec.topic, msgs...)
	timedOut := ctx.Err() != nil
	cancel()
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	if len(ids) > 0 {
		rec.id = ids[0]
	}
	if err != nil {
		rec.err = err
		h.publishFailed(w, rec, err, timedOut, ids)
		return
	}
	h.ready.succeeded()
	rec.status = http.StatusOK
	writeJSON(w, http.StatusOK, published{Topic: rec.topic, IDs: ids})
}

// published is the body of a 200 response.
type published struct {
	Topic string   `json:"topic"`
	IDs   []string `json:"ids"`
}

// errorBody is the body of every error response.
type errorBody struct {
	Error      string `json:"error"`
	Message    string `json:"message"`
	RetryAfter int    `json:"retry_after,omitempty"`
	// IDs and Failed describe a batch that was published in part.
	IDs    []string      `json:"ids,omitempty"`
	Failed []failedEntry `json:"failed,omitempty"`
}

type failedEntry struct {
	Index int    `json:"index"`
	ID    string `json:"id"`
	Error string `json:"error"`
}

const (
	msgNoToken      = "a bearer token is required (Authorization: Bearer <token>)"
	msgInvalidToken = "the bearer token is not valid"
)

// authenticate returns the request's grant, or the status and reason to
// refuse it with. It never logs or returns the token.
func (h *Handler) authenticate(r *http.Request) (*grant, int, string) {
	auth := r.Header.Values("Authorization")
	if len(auth) == 0 {
		if h.anon != nil {
			return h.anon, 0, ""
		}
		return nil, http.StatusUnauthorized, msgNoToken
	}
	scheme, token, ok := strings.Cut(auth[0], " ")
	token = strings.TrimSpace(token)
	if len(auth) > 1 || !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, http.StatusUnauthorized, msgNoToken
	}
	// The map is keyed by the token's SHA-256: what a lookup's timing could
	// reveal is about hashes, which tell nothing of other tokens.
	if g := h.tokens[sha256.Sum256([]byte(token))]; g != nil {
		return g, 0, ""
	}
	return nil, http.StatusUnauthorized, msgInvalidToken
}

// limit applies the rate limits: it answers 429 (or 503) and returns false
// when the request may not go on, and waits out a delay.
func (h *Handler) limit(w http.ResponseWriter, r *http.Request, rec *record, g *grant) bool {
	if h.limiter.Len() == 0 {
		return true
	}
	var buf [4]string
	keys := buf[:0]
	for _, k := range h.zoneKeys {
		switch k.kind {
		case "token":
			keys = append(keys, g.name)
		case "addr":
			keys = append(keys, clientAddr(r))
		case "header":
			keys = append(keys, r.Header.Get(k.header))
		case "global":
			keys = append(keys, "global")
		}
	}
	res := h.limiter.Check(keys)
	rec.limit = &res
	switch res.Status {
	case limitreq.Rejected:
		secs := max(1, int((res.RetryAfter+time.Second-1)/time.Second))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		h.failBody(w, rec, http.StatusTooManyRequests, ReasonRateLimited, errorBody{
			Message:    fmt.Sprintf("rate limit of zone %q exceeded", res.Zone),
			RetryAfter: secs,
		})
		return false
	case limitreq.Delayed:
		if h.delayed.Add(1) > int64(h.cfg.MaxDelayed) {
			h.delayed.Add(-1)
			h.fail(w, rec, http.StatusServiceUnavailable, ReasonOverloaded, "too many requests waiting for their turn")
			return false
		}
		defer h.delayed.Add(-1)
		h.m.delayed.Add(r.Context(), 1)
		t := time.NewTimer(res.Delay)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-h.draining:
			h.fail(w, rec, http.StatusServiceUnavailable, ReasonShuttingDown, "the server is shutting down")
			return false
		case <-r.Context().Done():
			rec.status, rec.reason, rec.message = 499, ReasonGone, "the client left while its request was delayed"
			return false
		}
	}
	return true
}

// clientAddr is the IP address of the connection's peer.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// publishFailed answers a failed Publish.
func (h *Handler) publishFailed(w http.ResponseWriter, rec *record, err error, timedOut bool, ids []string) {
	body := errorBody{}
	var pe *broker.PublishError
	if errors.As(err, &pe) && len(ids) > 1 {
		body.IDs = ids
		for _, f := range pe.Failed {
			body.Failed = append(body.Failed, failedEntry{Index: f.Index, ID: f.ID, Error: reasonOf(f.Err, false)})
		}
	}
	status, reason := classify(err, timedOut)
	switch reason {
	case ReasonTooLarge:
		body.Message = "the broker refused a message as too large: " + err.Error()
	case ReasonMalformed:
		body.Message = "the broker refused the message: " + err.Error()
	case ReasonNotFound:
		body.Message = fmt.Sprintf("the broker has no topic %q (or no subscriber group on it yet)", rec.topic)
	case ReasonFailed:
		body.Message = "the broker refused the message"
	case ReasonTimeout:
		body.Message = "the broker did not confirm in time; retry with the same Idempotency-Key"
	default:
		body.Message = "the broker is unavailable; retry with the same Idempotency-Key"
	}
	if status == http.StatusServiceUnavailable {
		h.ready.failed()
		secs := h.retryAfterSeconds()
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		body.RetryAfter = secs
	}
	h.failBody(w, rec, status, reason, body)
}

// classify maps a Publish error to a status and reason.
func classify(err error, timedOut bool) (int, string) {
	switch reasonOf(err, timedOut) {
	case ReasonTooLarge:
		return http.StatusRequestEntityTooLarge, ReasonTooLarge
	case ReasonMalformed:
		return http.StatusBadRequest, ReasonMalformed
	case ReasonNotFound:
		return http.StatusNotFound, ReasonNotFound
	case ReasonFailed:
		return http.StatusInternalServerError, ReasonFailed
	case ReasonTimeout:
		return http.StatusServiceUnavailable, ReasonTimeout
	}
	return http.StatusServiceUnavailable, ReasonUnavailable
}

func reasonOf(err error, timedOut bool) string {
	if errors.Is(err, broker.ErrTooLarge) {
		return ReasonTooLarge
	}
	if timedOut || errors.Is(err, context.DeadlineExceeded) {
		return ReasonTimeout
	}
	switch broker.KindOf(err) {
	case semantics.InvalidArgument:
		return ReasonMalformed
	case semantics.NotFound:
		return ReasonNotFound
	case semantics.Permanent, semantics.Unsupported:
		return ReasonFailed
	}
	return ReasonUnavailable
}

func (h *Handler) retryAfterSeconds() int {
	return max(1, int((time.Duration(h.cfg.RetryAfter)+time.Second-1)/time.Second))
}

// fail answers with an error body; 503s carry Retry-After.
func (h *Handler) fail(w http.ResponseWriter, rec *record, status int, reason, msg string) {
	body := errorBody{Message: msg}
	if status == http.StatusServiceUnavailable {
		secs := h.retryAfterSeconds()
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		body.RetryAfter = secs
	}
	if reason == ReasonShuttingDown {
		w.Header().Set("Connection", "close")
	}
	h.failBody(w, rec, status, reason, body)
}

func (h *Handler) failBody(w http.ResponseWriter, rec *record, status int, reason string, body errorBody) {
	rec.status, rec.reason, rec.message = status, reason, body.Message
	body.Error = reason
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"failed","message":"encoding the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// finish writes the access log record and the metrics of a publish
// request.
func (h *Handler) finish(r *http.Request, rec *record) {
	rec.elapsed = time.Since(rec.start)
	ctx := context.WithoutCancel(r.Context())
	h.m.observe(ctx, rec)
	level := slog.LevelInfo
	if rec.status >= 500 {
		level = slog.LevelWarn
	}
	if !h.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", rec.status),
		slog.Time("start", rec.start),
		slog.Float64("duration_ms", float64(rec.elapsed.Microseconds())/1000),
		slog.String("remote", clientAddr(r)),
	)
	if rec.topic != "" {
		attrs = append(attrs, slog.String("topic", rec.topic))
	}
	if rec.token != "" {
		attrs = append(attrs, slog.String("token", rec.token))
	}
	if rec.msgs > 0 {
		attrs = append(attrs, slog.Int("msgs", rec.msgs), slog.Int64("bytes", rec.bytes))
	}
	if rec.id != "" {
		attrs = append(attrs, slog.String("id", rec.id))
	}
	if l := rec.limit; l != nil && l.Zone != "" {
		attrs = append(attrs, slog.String("limit", l.Status.String()), slog.String("zone", l.Zone),
			slog.String("excess", limitreq.ExcessString(l.Excess)), slog.Time("limit_at", limitreq.Time(l.At)))
		if l.Delay > 0 {
			attrs = append(attrs, slog.Int64("delay_ms", l.Delay.Milliseconds()))
		}
	}
	if rec.reason != "" {
		attrs = append(attrs, slog.String("reason", rec.reason), slog.String("message", rec.message))
	}
	if rec.err != nil {
		attrs = append(attrs, slog.String("error", rec.err.Error()))
	}
	h.log.LogAttrs(ctx, level, "ingest", attrs...)
}

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	if h.isDraining() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "shutting down"})
		return
	}
	if err := h.ready.check(r.Context()); err != nil {
		w.Header().Set("Retry-After", strconv.Itoa(h.retryAfterSeconds()))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if strings.HasPrefix(p, "/v1/topics/") && (strings.HasSuffix(p, "/messages") || strings.HasSuffix(p, "/batch")) {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: ReasonMethod, Message: "use POST"})
		return
	}
	if p == "/healthz" || p == "/readyz" {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: ReasonMethod, Message: "use GET"})
		return
	}
	writeJSON(w, http.StatusNotFound, errorBody{Error: ReasonNotFound, Message: "no such endpoint; publish with POST /v1/topics/{topic}/messages or /batch"})
}
