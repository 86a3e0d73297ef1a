package pubsub

import (
	"context"
	"errors"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	ps "cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Scheme is the URL scheme this adapter registers: gcppubsub://PROJECT?params.
const Scheme = "gcppubsub"

func init() { driver.Register(Scheme, driver.OpenerFunc(open)) }

// parameters lists the URL parameters open accepts, in doc.go's order.
var parameters = []string{"emulator", "dial_timeout", "ordering", "create", "exactly_once",
	"subscription", "ack_deadline", "max_extension", "max_outstanding_messages",
	"max_outstanding_bytes", "streams", "batch_delay", "batch_count", "batch_bytes",
	"retry_min_backoff", "retry_max_backoff", "max_message_size"}

// maxStreams bounds the streams parameter: each stream is a goroutine and
// a gRPC stream, and more than a few per core buys nothing.
const maxStreams = 256

// open is the gcppubsub:// opener: it reads the URL (see the package doc),
// makes a client, and checks that the service answers.
func open(ctx context.Context, u *url.URL) (driver.Broker, error) {
	const op = "gcppubsub: open"
	project := u.Host
	switch {
	case u.User != nil:
		return nil, driver.Errorf(semantics.InvalidArgument, op,
			"gcppubsub URLs carry no credentials (got %s): use Application Default Credentials, or New with a configured client", u.Redacted())
	case project == "" || u.Port() != "" || (u.Path != "" && u.Path != "/"):
		return nil, driver.Errorf(semantics.InvalidArgument, op,
			"want gcppubsub://PROJECT?params, got %s (the project ID is the host part)", u.Redacted())
	}
	p := driver.NewParams(Scheme, u, parameters...)
	emulator := p.String("emulator", "")
	if emulator != "" {
		if err := checkHostPort(emulator); err != "" {
			p.Fail("parameter emulator=%q %s", emulator, err)
		}
	}
	opts := Options{
		DisableOrdering:        !p.Bool("ordering", true),
		DisableCreate:          !p.Bool("create", true),
		ExactlyOnce:            p.Bool("exactly_once", false),
		AckDeadline:            p.Duration("ack_deadline", 0),
		MaxExtension:           p.Duration("max_extension", 0),
		MaxOutstandingMessages: p.IntRange("max_outstanding_messages", 0, 0, math.MaxInt32),
		MaxOutstandingBytes:    p.IntRange("max_outstanding_bytes", 0, 0, math.MaxInt),
		Streams:                p.IntRange("streams", 0, 0, maxStreams),
		BatchDelay:             p.Duration("batch_delay", 0),
		BatchCount:             p.IntRange("batch_count", 0, 0, ps.MaxPublishRequestCount),
		BatchBytes:             p.IntRange("batch_bytes", 0, 0, ps.MaxPublishRequestBytes),
		RetryMinBackoff:        p.Duration("retry_min_backoff", 0),
		RetryMaxBackoff:        p.Duration("retry_max_backoff", 0),
		Subscription:           p.String("subscription", ""),
		MaxMessageSize:         p.IntRange("max_message_size", 0, 0, MaxMessageSize),
		CloseClient:            true,
	}
	dialTimeout := p.Duration("dial_timeout", DefaultDialTimeout)
	if dialTimeout == 0 {
		p.Fail("parameter dial_timeout must be positive")
	}
	// The ranges Options.withDefaults checks too, named as parameters.
	if d := opts.AckDeadline; d != 0 && (d < 10*time.Second || d > 600*time.Second) {
		p.Fail("parameter ack_deadline=%v is out of range [10s, 600s] (Pub/Sub's)", d)
	}
	for _, b := range []struct {
		name string
		d    time.Duration
	}{{"retry_min_backoff", opts.RetryMinBackoff}, {"retry_max_backoff", opts.RetryMaxBackoff}} {
		if b.d > 600*time.Second {
			p.Fail("parameter %s=%v is out of range [0s, 600s] (Pub/Sub's)", b.name, b.d)
		}
	}
	if lo, hi := opts.RetryMinBackoff, opts.RetryMaxBackoff; hi != 0 && hi < lo {
		p.Fail("parameter retry_max_backoff=%v is below retry_min_backoff=%v", hi, lo)
	}
	if sub := opts.Subscription; sub != "" {
		if err := checkID(op, "parameter subscription", sub, "subscriptions"); err != nil {
			p.Fail("%v", errors.Unwrap(err))
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if _, err := opts.withDefaults(op); err != nil {
		return nil, err
	}
	var copts []option.ClientOption
	where := "the Pub/Sub service"
	if env := os.Getenv("PUBSUB_EMULATOR_HOST"); env != "" {
		where = "the Pub/Sub emulator at PUBSUB_EMULATOR_HOST=" + env
	}
	if emulator != "" {
		where = "the Pub/Sub emulator at " + emulator
		copts = append(copts,
			option.WithEndpoint(emulator),
			option.WithoutAuthentication(),
			option.WithTelemetryDisabled(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	}
	client, err := ps.NewClient(ctx, project, copts...)
	if err != nil {
		return nil, wrap(op, err)
	}
	b, err := New(client, opts)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	if err := b.ping(ctx, dialTimeout); err != nil {
		_ = client.Close()
		return nil, driver.Errorf(driver.KindOf(err), op, "cannot reach %s within %v: %w", where, dialTimeout, err)
	}
	return b, nil
}

// checkHostPort says what is wrong with an emulator address, or "".
func checkHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "is not host:port"
	}
	if host == "" {
		return "has no host"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "has a port outside 1..65535"
	}
	return ""
}

// ping makes one cheap request, so that Open fails fast with a clear error
// when the service is unreachable instead of on first use. Any answer from
// the service (even not found or permission denied) proves it is there.
func (b *Broker) ping(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := b.client.TopicAdminClient.GetTopic(ctx, &pb.GetTopicRequest{Topic: b.topicName("queuekit-ping")})
	if err == nil || isCode(err, codes.NotFound) || isCode(err, codes.PermissionDenied) {
		return nil
	}
	return driver.WrapError(semantics.Transient, "", err)
}
