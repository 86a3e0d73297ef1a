package memory

import "github.com/queuekit/queuekit/internal/keytab"

// keyTable holds the keys of a group that have a message delivered (or
// about to be redelivered, or let go to the front of the ready queue by
// an ack): that message owns its key (entry.owns) and is the only one of
// the key that may be delivered; the key's later messages wait behind it,
// head..tail, in publish order. Publish hashes each key once, before it
// takes a group's lock, and the hash serves every group of the topic: a
// key costs one probe when its message is taken from the ready queue and
// one when it is acked, and a message that owns its key already is
// delivered without a probe.
type keyTable = keytab.Table[keyWait]

// keyWait is a held key's queue of messages waiting behind its owner.
type keyWait struct {
	head, tail *entry
}

func newKeyTable() keyTable { return keytab.New[keyWait](16) }

// hashOf returns e's key's hash, computing it unless Publish did.
func hashOf(e *entry) uint64 {
	if e.khash == 0 {
		e.khash = keytab.Hash(e.key)
	}
	return e.khash
}
