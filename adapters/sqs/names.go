package sqs

import (
	"fmt"
	"hash/fnv"
	"strings"
)

const fifoSuffix = ".fifo"

// Name length limits of SQS queues and SNS topics.
const (
	maxQueueName = 80
	maxTopicName = 256
)

// isQueueURL reports whether s is a queue URL rather than a name.
func isQueueURL(s string) bool {
	return strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://")
}

// isTopicARN reports whether s is an SNS topic ARN rather than a name.
func isTopicARN(s string) bool { return strings.HasPrefix(s, "arn:") }

// physicalName turns a queuekit topic name into a valid SQS queue or SNS
// topic name: characters other than letters, digits, '-' and '_' become
// '_' (so "orders.dlq" is "orders_dlq"), FIFO names end in ".fifo", and a
// name over max is shortened with a hash of the full name kept at its end.
func physicalName(name string, fifo bool, max int) string {
	base := strings.TrimSuffix(name, fifoSuffix)
	var b strings.Builder
	b.Grow(len(base) + len(fifoSuffix))
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := b.String()
	limit := max
	if fifo {
		limit -= len(fifoSuffix)
	}
	if len(s) > limit {
		tail := "-" + hashString(name)[:8]
		s = s[:limit-len(tail)] + tail
	}
	if fifo {
		s += fifoSuffix
	}
	return s
}

// hashString returns 16 hex digits of the FNV-1a hash of s.
func hashString(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	return fmt.Sprintf("%016x", h.Sum64())
}

// QueueName returns the name of the SQS queue that topic maps to in queue
// mode (no SNS client): the topic itself made valid for SQS, with ".fifo"
// appended when fifo is set. A queue URL is returned as it is.
func QueueName(topic string, fifo bool) string {
	if isQueueURL(topic) {
		return topic
	}
	return physicalName(topic, fifo || strings.HasSuffix(topic, fifoSuffix), maxQueueName)
}

// GroupQueueName returns the name of the SQS queue that subscriber group
// group reads in fan-out mode: "<topic>-<group>", made valid for SQS (see
// QueueName). It is subscribed to the SNS topic TopicName(topic, fifo).
func GroupQueueName(topic, group string, fifo bool) string {
	fifo = fifo || strings.HasSuffix(topic, fifoSuffix)
	if isTopicARN(topic) {
		topic = topic[strings.LastIndexByte(topic, ':')+1:]
	}
	return physicalName(strings.TrimSuffix(topic, fifoSuffix)+"-"+group, fifo, maxQueueName)
}

// TopicName returns the name of the SNS topic that topic maps to in
// fan-out mode, made valid for SNS like QueueName. A topic ARN is returned
// as it is.
func TopicName(topic string, fifo bool) string {
	if isTopicARN(topic) {
		return topic
	}
	return physicalName(topic, fifo || strings.HasSuffix(topic, fifoSuffix), maxTopicName)
}
