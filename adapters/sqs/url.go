package sqs

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Scheme is the URL scheme this adapter registers: sqs://.
const Scheme = "sqs"

func init() {
	driver.Register(Scheme, driver.OpenerFunc(openURL))
}

// URL parameters of sqs://, all optional (see the package documentation).
var urlParams = []string{"region", "endpoint", "fifo", "fanout", "wait_time", "visibility_timeout",
	"max_messages", "pollers", "max_extension", "max_message_size", "create"}

// Ranges of the URL parameters (and of the Options fields they set).
const (
	maxWaitTime   = 20 * time.Second
	maxPollers    = 64
	maxVisibility = 12 * time.Hour // also the longest a message can be held
)

// regionName is what an AWS region name looks like (us-east-1,
// us-gov-west-1, and the "local" or "elasticmq" of emulators).
var regionName = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

// openURL opens sqs://?params; see the package documentation.
func openURL(ctx context.Context, u *url.URL) (driver.Broker, error) {
	const op = "sqs: open"
	if u.Host != "" || strings.Trim(u.Path, "/") != "" || u.User != nil {
		return nil, driver.Errorf(semantics.InvalidArgument, op,
			"sqs:// takes no host or path (got %q): name the queue as the topic in Publish and SubscriberOptions (a queue name or queue URL), and the endpoint with ?endpoint=", u.Redacted())
	}
	p := driver.NewParams(Scheme, u, urlParams...)
	region := p.String("region", "")
	endpoint := p.String("endpoint", "")
	fanout := p.Bool("fanout", false)
	opts := Options{
		FIFO:              p.Bool("fifo", false),
		WaitTime:          p.Duration("wait_time", DefaultWaitTime),
		VisibilityTimeout: p.Duration("visibility_timeout", DefaultVisibilityTimeout),
		MaxMessages:       p.IntRange("max_messages", DefaultMaxMessages, 1, 10),
		Pollers:           p.IntRange("pollers", DefaultPollers, 1, maxPollers),
		MaxExtension:      p.Duration("max_extension", DefaultMaxExtension),
		NoCreate:          !p.Bool("create", true),
	}
	wire := WireLimit
	if fanout {
		wire = FanOutWireLimit
	}
	if n := p.Int("max_message_size", 0); n < 0 || n > wire || (n == 0 && p.String("max_message_size", "") != "") {
		p.Fail("parameter max_message_size=%d is not within 1-%d", n, wire)
	} else {
		opts.MaxMessageSize = n
	}
	if opts.WaitTime == 0 {
		opts.WaitTime = -1 // explicit 0s: short polling
	}
	if w := opts.WaitTime; w > 0 && (w > maxWaitTime || w%time.Second != 0) {
		p.Fail("parameter wait_time=%v is not a whole number of seconds within 0s-20s", w)
	}
	if v := opts.VisibilityTimeout; v < time.Second || v > maxVisibility {
		p.Fail("parameter visibility_timeout=%v is not within 1s-12h", v)
		opts.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if x := opts.MaxExtension; x < time.Second || x > maxVisibility {
		p.Fail("parameter max_extension=%v is not within 1s-12h", x)
		opts.MaxExtension = DefaultMaxExtension
	}
	if region != "" && (len(region) > 64 || !regionName.MatchString(region)) {
		p.Fail("parameter region=%q is not an AWS region name such as eu-west-1", region)
	}
	if endpoint != "" {
		if eu, err := url.Parse(endpoint); err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" || eu.User != nil {
			p.Fail("parameter endpoint=%q is not an http(s) URL without credentials", driver.Redact(endpoint))
		} else if port := eu.Port(); port != "" {
			if n, err := net.LookupPort("tcp", port); err != nil || n < 1 || n > 65535 {
				p.Fail("parameter endpoint=%q has port %s, not within 1-65535", driver.Redact(endpoint), port)
			}
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	cfg, err := loadConfig(ctx, region, endpoint)
	if err != nil {
		return nil, err
	}
	sqsClient := awssqs.NewFromConfig(cfg)
	if fanout {
		opts.SNS = sns.NewFromConfig(cfg)
	}
	b, err := New(sqsClient, opts)
	if err != nil {
		return nil, err // not b: a nil *Broker in a non-nil driver.Broker
	}
	return b, nil
}

// loadConfig builds the AWS configuration of a URL-opened broker: the
// default credential chain and region, or static placeholder credentials
// (and region us-east-1 unless region is set) for an emulator endpoint.
// The SDK's own retries are off: queuekit's callers decide about retrying.
func loadConfig(ctx context.Context, region, endpoint string) (aws.Config, error) {
	const op = "sqs: open"
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 5 * time.Second }).
		WithTransportOptions(func(t *http.Transport) { t.MaxIdleConnsPerHost = 64 })
	loads := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if region != "" {
		loads = append(loads, config.WithRegion(region))
	}
	if endpoint != "" {
		if region == "" {
			loads = append(loads, config.WithRegion("us-east-1"))
		}
		loads = append(loads,
			config.WithBaseEndpoint(endpoint),
			config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("queuekit", "queuekit", "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loads...)
	if err != nil {
		return aws.Config{}, driver.WrapError(semantics.InvalidArgument, op, err)
	}
	if cfg.Region == "" {
		return aws.Config{}, driver.Errorf(semantics.InvalidArgument, op, "no AWS region: add ?region= to the URL or set AWS_REGION")
	}
	return cfg, nil
}
