package kafka

// Partition returns the partition, of n, that a message with key goes to:
// murmur2 of the key with the sign bit masked, modulo n — what the Java
// client's default partitioner, kafkajs' default partitioner, franz-go and
// this adapter's publisher compute. An empty key has no fixed partition;
// Partition returns -1 for it.
func Partition(key string, n int) int {
	if key == "" || n <= 0 {
		return -1
	}
	return int(murmur2(key)&0x7fffffff) % n
}

// murmur2 is Kafka's Utils.murmur2 (seed 0x9747b28c).
func murmur2(b string) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for ; len(b) >= 4; b = b[4:] {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
