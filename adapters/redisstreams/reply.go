package redisstreams

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"unsafe"
)

// The reader reads the RESP reply of its XREADGROUP whole into the buffer
// of its connection (conn.go), and xreadReply walks it, handing out each
// entry's fields as strings that view the buffer. The decoder copies what
// a message keeps (payload, ID, key, header values; header names are
// interned), so a message never refers to the buffer. This costs a
// fraction of go-redis's own parses, which allocate every field as a
// string of its own and box it in an interface (Do) or put the fields of
// each entry in a map (XReadGroup).

// replyError is an error reply of Redis, as go-redis reports them
// (redis.Error: isNoGroup and the error kinds recognise it).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

var errReply = errors.New("redisstreams: malformed XREADGROUP reply")

// xreadReply walks the RESP reply of an XREADGROUP: an array of
// [stream, entries] pairs (RESP2) or a map of stream to entries (RESP3),
// each entry [id, [name, value, ...]].
type xreadReply struct {
	b []byte
	i int
	// src, when set, is the connection the reply is read from as far as
	// the walk needs (b is its buffer); without it b holds the whole reply.
	src *readerConn
}

// more reads more of the reply.
func (r *xreadReply) more() error {
	if r.src == nil {
		return fmt.Errorf("%w: truncated", errReply)
	}
	if err := r.src.fill(); err != nil {
		return err
	}
	r.b = r.src.buf
	return nil
}

// header reads the next type line: its type byte, its number (length
// or count; -1 for a RESP2 null) and the line's text (a view).
func (r *xreadReply) header() (typ byte, n int, text []byte, err error) {
	// The common case first: the type of a length or count, its digits
	// and CRLF, all in the buffer.
	if b, i := r.b, r.i; i+3 < len(b) {
		switch t := b[i]; t {
		case '$', '*', ':', '%':
			j := i + 1
			neg := b[j] == '-'
			if neg {
				j++
			}
			start, v := j, 0
			for ; j < len(b) && j-start < 18 && b[j]-'0' <= 9; j++ {
				v = 10*v + int(b[j]-'0')
			}
			if j > start && j+1 < len(b) && b[j] == '\r' && b[j+1] == '\n' {
				if neg {
					v = -v
				}
				r.i = j + 2
				return t, v, b[i+1 : j], nil
			}
		}
	}
	end := -1
	for from := r.i; ; {
		if k := bytes.IndexByte(r.b[from:], '\n'); k >= 0 {
			end = from + k
			break
		}
		from = len(r.b)
		if err := r.more(); err != nil {
			return 0, 0, nil, err
		}
	}
	if end < r.i+2 || r.b[end-1] != '\r' {
		return 0, 0, nil, errReply
	}
	typ, line := r.b[r.i], r.b[r.i+1:end-1]
	r.i = end + 1
	switch typ {
	case '+', '-':
		return typ, 0, line, nil
	case '_':
		return typ, -1, line, nil
	}
	v, err := strconv.Atoi(view(line))
	if err != nil {
		return 0, 0, nil, errReply
	}
	return typ, v, line, nil
}

// need reads until the n bytes after the walk's position are here.
func (r *xreadReply) need(n int) error {
	for r.i+n > len(r.b) {
		if err := r.more(); err != nil {
			return err
		}
	}
	return nil
}

// str reads a bulk or simple string, as a view of the buffer.
func (r *xreadReply) str() (string, error) {
	typ, n, text, err := r.header()
	switch {
	case err != nil:
		return "", err
	case typ == '+':
		return view(text), nil
	case typ != '$' || n < 0:
		return "", errReply
	}
	if err := r.need(n + 2); err != nil {
		return "", err
	}
	s := view(r.b[r.i : r.i+n])
	r.i += n + 2
	return s, nil
}

// count reads an array (or with maps, a map) header: its count, -1 for a
// null reply.
func (r *xreadReply) count(maps bool) (int, bool, error) {
	typ, n, text, err := r.header()
	switch {
	case err != nil:
		return 0, false, err
	case typ == '-':
		return 0, false, replyError(text)
	case typ == '_', typ == '*' && n < 0:
		return -1, false, nil
	case typ == '*':
		return n, false, nil
	case typ == '%' && maps:
		return n, true, nil
	}
	return 0, false, fmt.Errorf("%w: type %q", errReply, typ)
}

// skip passes over one value (of a kind an entry may carry besides its ID
// and fields: integers).
func (r *xreadReply) skip() error {
	typ, n, _, err := r.header()
	if err != nil {
		return err
	}
	if typ == '$' && n >= 0 {
		if err := r.need(n + 2); err != nil {
			return err
		}
		r.i += n + 2
	}
	return nil
}

// each calls fn (unless nil) for every entry of the reply, with a view of
// its stream, its ID and its fields (name, value, ...; none for an entry
// deleted since it was added), and returns how many entries there were:
// -1 for a null reply (the block ran out).
func (r *xreadReply) each(fields []string, fn func(stream, id string, fields []string)) (int, error) {
	streams, isMap, err := r.count(true)
	if err != nil || streams < 0 {
		return streams, err
	}
	total := 0
	for range streams {
		if !isMap {
			if n, _, err := r.count(false); err != nil || n != 2 {
				return 0, errors.Join(errReply, err)
			}
		}
		stream, err := r.str()
		if err != nil {
			return 0, err
		}
		entries, _, err := r.count(false)
		if err != nil {
			return 0, err
		}
		for range entries {
			n, _, err := r.count(false)
			if err != nil || n < 2 {
				return 0, errors.Join(errReply, err)
			}
			id, err := r.str()
			if err != nil {
				return 0, err
			}
			k, _, err := r.count(false)
			if err != nil {
				return 0, err
			}
			fields = fields[:0]
			for range k {
				f, err := r.str()
				if err != nil {
					return 0, err
				}
				fields = append(fields, f)
			}
			for range n - 2 { // XREADGROUP ... CLAIM adds two counts
				if err := r.skip(); err != nil {
					return 0, err
				}
			}
			total++
			if fn != nil {
				fn(stream, id, fields)
			}
		}
	}
	if r.src == nil && r.i != len(r.b) {
		return 0, fmt.Errorf("%w: %d bytes left over", errReply, len(r.b)-r.i)
	}
	return total, nil
}

// view is the string of b's bytes, without copying them: it is valid only
// as long as b is not written to.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
