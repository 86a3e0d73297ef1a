// Package ingest accepts messages over HTTP and publishes them through any
// queuekit broker, with backpressure at the edge: nginx's limit_req rate
// limiting built in (package limitreq), a bound on the publishes in flight,
// and errors that tell a client when to come back. Handler is an
// http.Handler to mount in a server of your own; `queuekit serve` runs one
// from a JSON config file.
//
//	h, err := ingest.New(ingest.Options{Publisher: pub, Config: cfg})
//	http.Handle("/", h)
//
// # Protocol
//
//	POST /v1/topics/{topic}/messages   one message; the body is the payload
//	POST /v1/topics/{topic}/batch      NDJSON: one message per line
//	GET  /healthz                      200 while the process serves
//	GET  /readyz                       200 only while the broker answers
//
// A single message takes its metadata from request headers:
//
//	Authorization: Bearer <token>      required unless the topic is anonymous
//	Idempotency-Key: <id>              becomes the message ID (printable ASCII, at most 255 bytes)
//	Queuekit-Key: <key>                the message key (partitioning and per-key order)
//	Queuekit-Header-<Name>: <value>    message header "<name>" (lower-cased); names starting
//	                                   with "queuekit-" are reserved
//
// A batch line is {"id":..., "key":..., "headers":{...}, "payload":"<base64>"}
// or the same with "text":"<utf-8>" instead of "payload"; unknown fields are
// refused. A line without "id" in a request with an Idempotency-Key gets
// the ID "<Idempotency-Key>:<index>" (index from 0 among the lines), so a
// retried batch republishes the same IDs. The batch is published with one
// Publish call and counts as one request for the rate limits.
//
// Success is 200 with {"topic":"orders","ids":["..."]}, sent only after the
// broker's Publish returned nil: the broker has durably accepted every
// message, and the client may forget them.
//
// # Retries and exactly-once
//
// A client that got an error or no answer retries with the same
// Idempotency-Key (or the same batch IDs). The retry publishes a message
// with the same ID; when the first attempt had reached the broker after
// all, the broker holds it twice, and a consumer that deduplicates by ID
// (middleware/dedupe) handles it once. Without an Idempotency-Key each
// request gets a fresh random ID and a retry is a new message. IDs are not
// scoped per token: use keys that are unique across clients, such as UUIDs.
//
// # Errors
//
// Every error is JSON, {"error":"<reason>","message":"<why>"}; the reason is
// also the reason attribute of the metrics and the access log.
//
//	400 malformed      bad topic name, repeated or reserved header, bad NDJSON line (its number),
//	                   or a message the broker refused as invalid
//	401 unauthorized   no bearer token, or not a valid one (WWW-Authenticate: Bearer)
//	403 forbidden      the token may not publish to the topic
//	404 not_found      no such endpoint, or the broker has no such topic (no subscriber group yet)
//	413 too_large      body over max_body_bytes / max_batch_bytes, more than
//	                   max_batch_messages, or over the broker's message size limit
//	429 rate_limited   over a zone's rate and burst; Retry-After: seconds until the zone
//	                   would accept this client's next request
//	503 unavailable    the broker failed the publish (down, connection lost): Retry-After
//	503 timeout        the broker did not confirm within publish_timeout: Retry-After
//	503 overloaded     max_in_flight publishes (or max_delayed waits) already: Retry-After
//	503 shutting_down  the handler is draining: Retry-After, Connection: close
//	500 failed         the broker refused the message for good (permanent or unsupported)
//
// A client may retry every 503 and 429 after Retry-After; a 503 after a
// timeout may have been published all the same, which the Idempotency-Key
// makes harmless.
//
// # Backpressure
//
// Requests are checked in this order: route and topic name, token, topic
// grant, rate limits, then a slot among max_in_flight for reading the body
// and publishing. Nothing waits without bound: a rate-limited request is
// answered 429 at once (or, in a zone's delaying mode, waits at most
// burst/rate, max_delayed of them at once); without a free in-flight slot
// the answer is 503 at once; a publish waits at most publish_timeout. Memory
// is therefore bounded by max_in_flight × max_batch_bytes for bodies, the
// zones' max_keys for rate-limit state, and the server's max_connections.
//
// # Rate limits
//
// Each zone is an nginx limit_req_zone plus its limit_req, with the same
// arithmetic (package limitreq documents it): excess counted in thousandths
// of a request per millisecond, burst, nodelay, delay=N and the default
// delaying mode. Zones apply in order, all of them to every request that
// reaches them: after authentication, before the body is read. A zone keyed
// by "token" counts per token name (anonymous requests share one key),
// "addr" per client IP address, "header:<Name>" per value of that header
// (a request without it is not limited by that zone, as nginx skips an
// empty key), and "global" counts every request alike. Unlike nginx, whose
// limit_req_status defaults to 503, a rejected request gets 429 with
// Retry-After.
//
// # Config
//
// The JSON config (ParseConfig, LoadConfig) names everything a Handler
// enforces and, under "server", what NewServer and Serve apply; every
// limit left out takes its default:
//
//	{
//	  "tokens": [
//	    {"name": "checkout", "sha256": "<queuekit serve -hash-token>", "topics": ["orders", "payments.*"]}
//	  ],
//	  "zones": [
//	    {"name": "ingest", "key": "token", "rate": "50r/s", "burst": 100, "nodelay": true},
//	    {"name": "per_ip", "key": "addr", "rate": "600r/m", "burst": 20}
//	  ],
//	  "max_in_flight": 256, "max_body_bytes": 1048576, "publish_timeout": "10s",
//	  "server": {"listen": ":8443", "tls_cert": "cert.pem", "tls_key": "key.pem",
//	             "read_header_timeout": "5s", "read_timeout": "30s", "max_connections": 4096}
//	}
//
// Tokens are stored as the hex SHA-256 of the secret (HashToken, NewToken),
// so the config holds no secret. No request publishes without a token
// unless its topic is listed in anonymous_topics.
//
// # Operations
//
// /readyz is ready while Options.Probe (or the publisher's Ping) succeeds,
// probed at most once per ProbeInterval, and no publish failed for want of
// the broker within the last retry_after; it turns unready at Shutdown.
// Shutdown stops taking messages and waits for the publishes in flight;
// Serve does it with http.Server.Shutdown on a signal.
//
// Metrics, through the OpenTelemetry metric API (Options.MeterProvider):
//
//	queuekit.ingest.accepted   counter   messages the broker accepted (messaging.destination.name)
//	queuekit.ingest.rejected   counter   error responses, by reason
//	queuekit.ingest.delayed    counter   requests a zone delayed
//	queuekit.ingest.in_flight  up-down   requests reading their body or publishing
//	queuekit.ingest.duration   histogram seconds from arrival to response, by outcome
//	                                     ("accepted" or the reason)
//
// The access log (Options.Logger, log/slog) has one record per publish
// request: method, path, status, start, duration_ms, remote, topic, token
// (its name), msgs, bytes, id (the Idempotency-Key, or the first message's
// ID), the rate limit's decision (limit: passed, delayed or rejected; zone;
// excess, as nginx logs it; limit_at, the millisecond it was decided at;
// delay_ms), and for errors reason, message
// and the broker's error. The Authorization header and the token itself are
// never logged.
package ingest
