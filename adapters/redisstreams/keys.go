package redisstreams

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest topic or group name, in bytes.
const MaxNameLen = 255

// checkName applies the adapter's rules for topic and group names (and the
// key prefix): 1 to MaxNameLen bytes of UTF-8 without spaces, control
// characters, '{' or '}'. Braces are refused because the adapter puts a
// topic's stream name in a Redis Cluster hash tag, which must not nest.
func checkName(op, what, name string) error {
	switch {
	case name == "":
		return invalid(op, "%s is required", what)
	case len(name) > MaxNameLen:
		return invalid(op, "%s is %d bytes, over the limit of %d", what, len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return invalid(op, "%s %q is not valid UTF-8", what, name)
	}
	if i := strings.IndexFunc(name, badNameRune); i >= 0 {
		return invalid(op, "%s %q contains %q: names are letters, digits and punctuation other than '{' and '}' (no spaces or control characters)", what, name, []rune(name[i:])[0])
	}
	return nil
}

func badNameRune(r rune) bool {
	return r == '{' || r == '}' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
}

// Key layout. A topic T under prefix P is stored as
//
//	P+T                          its stream (shard 0; the only one with shards=1)
//	{P+T}:1 ... {P+T}:N-1        its other shards
//	{P+T}:qk:meta                hash: shards
//	{P+T}:qk:delay:<i>:<group>   sorted set: ids of shard i nacked with a delay, by due time
//	{P+T}:qk:lease:<i>:<group>   string: the consumer owning shard i under PerKey
//	{P+T}:qk:members:<group>     sorted set: live PerKey consumers of the group
//	{P+T}:qk:sched               sorted set: messages published for later, by due time
//	{P+T}:qk:schedmsg            hash: those messages' entries
//
// A key without braces hashes to the same Redis Cluster slot as the keys
// whose hash tag is that key, so every key of a topic shares one slot.
type topicKeys struct {
	topic   string
	base    string   // P+T
	streams []string // one per shard
}

func newTopicKeys(prefix, topic string, shards int) *topicKeys {
	base := prefix + topic
	k := &topicKeys{topic: topic, base: base, streams: make([]string, shards)}
	for i := range k.streams {
		k.streams[i] = shardStream(base, i)
	}
	return k
}

func shardStream(base string, i int) string {
	if i == 0 {
		return base
	}
	return "{" + base + "}:" + strconv.Itoa(i)
}

func metaKey(base string) string { return "{" + base + "}:qk:meta" }

func (k *topicKeys) meta() string { return metaKey(k.base) }

func (k *topicKeys) delay(shard int, group string) string {
	return "{" + k.base + "}:qk:delay:" + strconv.Itoa(shard) + ":" + group
}

func (k *topicKeys) lease(shard int, group string) string {
	return "{" + k.base + "}:qk:lease:" + strconv.Itoa(shard) + ":" + group
}

func (k *topicKeys) members(group string) string { return "{" + k.base + "}:qk:members:" + group }

func (k *topicKeys) sched() string { return "{" + k.base + "}:qk:sched" }

func (k *topicKeys) schedMsg() string { return "{" + k.base + "}:qk:schedmsg" }

// ShardOf returns the shard a message with key goes to on a topic of
// shards shards: FNV-1a (32 bit) of the key modulo shards. Keyless messages
// are spread round robin instead.
func ShardOf(key string, shards int) int {
	if shards <= 1 {
		return 0
	}
	return int(fnv32(key) % uint32(shards))
}

// fnv32 is FNV-1a, 32 bit.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
