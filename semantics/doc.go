// Package semantics holds queuekit's vocabulary: the delivery Guarantee a
// consumer runs under, the Ordering it asks for, the Capabilities an adapter
// declares, the error Kinds every adapter reports, and the Ledger that counts
// what was published, delivered and handled so that loss, duplicates and
// reordering are measured rather than assumed.
//
// It imports the standard library only; every other queuekit package builds
// on it.
package semantics
