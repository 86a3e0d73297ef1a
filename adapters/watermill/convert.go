package watermill

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker"
)

// MetadataKey is the Watermill metadata entry that carries Message.Key,
// which Watermill has no field for. It is the same name the RabbitMQ adapter
// gives its key header.
const MetadataKey = broker.HeaderPrefix + "key"

// ToWatermill returns m as a new Watermill message: UUID = m.ID, Payload =
// m.Payload (not copied), Metadata = m.Headers plus MetadataKey (when m.Key
// is set) and broker.HeaderPublishedAt (when m.PublishedAt is set, RFC 3339
// with nanoseconds). Its context is the background context.
func ToWatermill(m *broker.Message) *message.Message {
	wm := message.NewMessage(m.ID, m.Payload)
	if n := len(m.Headers) + 2; n > 8 {
		wm.Metadata = make(message.Metadata, n)
	}
	for k, v := range m.Headers {
		wm.Metadata[k] = v
	}
	if m.Key != "" {
		wm.Metadata[MetadataKey] = m.Key
	}
	if !m.PublishedAt.IsZero() {
		wm.Metadata[broker.HeaderPublishedAt] = m.PublishedAt.UTC().Format(time.RFC3339Nano)
	}
	return wm
}

// FromWatermill returns wm as a queuekit message from topic: ID = wm.UUID,
// Payload = wm.Payload (not copied), Key and PublishedAt from the metadata
// ToWatermill writes, and every other metadata entry as a header but
// broker.HeaderID and broker.HeaderAttempt, which name a message's identity
// and are never taken from metadata (Publish would refuse them). Attempt is
// 0: Watermill counts no deliveries.
func FromWatermill(wm *message.Message, topic string) *broker.Message {
	m := &broker.Message{ID: wm.UUID, Payload: wm.Payload, Topic: topic}
	for k, v := range wm.Metadata {
		switch k {
		case broker.HeaderID, broker.HeaderAttempt:
		case MetadataKey:
			m.Key = v
		case broker.HeaderPublishedAt:
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
				m.PublishedAt = t
				continue
			}
			m.SetHeader(k, v) // not ours: keep it as it came
		default:
			m.SetHeader(k, v)
		}
	}
	return m
}

// delivered is FromWatermill for a message the bridge's Subscriber
// delivered, which carries the queuekit attempt in broker.HeaderAttempt.
func delivered(wm *message.Message, topic string) *broker.Message {
	m := FromWatermill(wm, topic)
	if n, err := strconv.Atoi(wm.Metadata[broker.HeaderAttempt]); err == nil && n > 0 {
		m.Attempt = n
	}
	return m
}

// publishable is FromWatermill for a message about to be published: the
// entries of a message that came from a subscription and is passed on
// (published-at, attempt, and the ID entry, which the UUID gives) are not
// carried over, so the new message gets its own and Publish, which refuses
// reserved headers, accepts it.
func publishable(wm *message.Message) *broker.Message {
	m := &broker.Message{ID: wm.UUID, Payload: wm.Payload}
	for k, v := range wm.Metadata {
		switch k {
		case MetadataKey:
			m.Key = v
		case broker.HeaderPublishedAt, broker.HeaderAttempt, broker.HeaderID:
		default:
			m.SetHeader(k, v)
		}
	}
	return m
}
