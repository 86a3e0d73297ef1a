// Command kfakeserver runs a kfake Kafka-protocol broker in its own process,
// so that benchmarks do not charge the broker's CPU to the client. It prints
// "ADDR host:port" for each listener once it is ready, and runs until its
// standard input closes or it is signalled.
//
//	kfakeserver [-partitions 3] [-blackhole] [-synthetic 500 -value-bytes 256]
//
// -blackhole acknowledges produced records without storing them (produce
// benchmarks); -synthetic N serves every fetch from one canned batch of N
// records with a key, a value of -value-bytes and a queuekit-id header,
// without storing anything (consume benchmarks).
package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func main() {
	partitions := flag.Int("partitions", 3, "partitions of auto-created topics")
	blackhole := flag.Bool("blackhole", false, "acknowledge produced records without storing them")
	synthetic := flag.Int("synthetic", 0, "serve fetches from a canned batch of this many records (0: off)")
	valueBytes := flag.Int("value-bytes", 256, "value size of the synthetic records")
	flag.Parse()

	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(*partitions),
	}
	if *blackhole {
		opts = append(opts, kfake.BlackholeProduce())
	}
	if *synthetic > 0 {
		opts = append(opts, kfake.SyntheticFetch(kfake.SyntheticBatch{Batch: cannedBatch(*synthetic, *valueBytes)}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kfakeserver:", err)
		os.Exit(1)
	}
	defer c.Close()
	for _, addr := range c.ListenAddrs() {
		fmt.Println("ADDR", addr)
	}

	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-done:
	case <-sig:
	}
}

// cannedBatch builds a v2 record batch of n records keyed "key-0".."key-15",
// each with a value of valueBytes and a random queuekit-id header.
func cannedBatch(n, valueBytes int) []byte {
	var records []byte
	value := make([]byte, valueBytes)
	_, _ = rand.Read(value)
	for i := 0; i < n; i++ {
		var id [16]byte
		_, _ = rand.Read(id[:])
		r := kmsg.Record{
			OffsetDelta: int32(i),
			Key:         []byte(fmt.Sprint("key-", i%16)),
			Value:       value,
			Headers:     []kmsg.Header{{Key: "queuekit-id", Value: []byte(hex.EncodeToString(id[:]))}},
		}
		body := r.AppendTo(nil)[1:] // without the 1-byte varint of Length 0
		r.Length = int32(len(body))
		records = append(records, r.AppendTo(nil)...)
	}
	now := time.Now().UnixMilli()
	b := kmsg.RecordBatch{
		Magic:           2,
		LastOffsetDelta: int32(n - 1),
		FirstTimestamp:  now,
		MaxTimestamp:    now,
		ProducerID:      -1,
		ProducerEpoch:   -1,
		FirstSequence:   -1,
		NumRecords:      int32(n),
		Records:         records,
	}
	raw := b.AppendTo(nil)
	binary.BigEndian.PutUint32(raw[8:12], uint32(len(raw)-12))                                          // Length: what follows it
	binary.BigEndian.PutUint32(raw[17:21], crc32.Checksum(raw[21:], crc32.MakeTable(crc32.Castagnoli))) // CRC from Attributes on
	return raw
}
