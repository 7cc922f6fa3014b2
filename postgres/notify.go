package postgres

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// A change is what one NOTIFY on the prefix's channel says. Every table
// of a prefix shares the channel; its payload is
//
//	<op> <version> <len(name)>:<name><key>
//
// with op 'n' (a put of a row no node owns: claim it), 'p' (a put of an
// owned row), 'd' (a delete) or 'r' (a node released rows; empty key).
// The length prefix carries any name and key without escaping.
type change struct {
	op      byte
	version int64
	name    string
	key     string
}

const (
	opPutFree  = 'n'
	opPut      = 'p'
	opDelete   = 'd'
	opReleased = 'r'
)

var errPayload = errors.New("postgres: malformed notification")

// payloadTail is the part of a payload after the version.
func payloadTail(name, key string) string {
	return strconv.Itoa(len(name)) + ":" + name + key
}

func (c change) payload() string {
	return string(c.op) + " " + strconv.FormatInt(c.version, 10) + " " + payloadTail(c.name, c.key)
}

// parseChange reads a payload; anything else on the channel is an error.
func parseChange(payload string) (change, error) {
	var c change
	if len(payload) < 2 || payload[1] != ' ' {
		return c, fmt.Errorf("%w: %q", errPayload, payload)
	}
	c.op = payload[0]
	switch c.op {
	case opPutFree, opPut, opDelete, opReleased:
	default:
		return c, fmt.Errorf("%w: op %q", errPayload, c.op)
	}
	version, rest, ok := strings.Cut(payload[2:], " ")
	if !ok {
		return c, fmt.Errorf("%w: no version in %q", errPayload, payload)
	}
	var err error
	if c.version, err = strconv.ParseInt(version, 10, 64); err != nil || c.version < 0 {
		return c, fmt.Errorf("%w: version %q", errPayload, version)
	}
	size, rest, ok := strings.Cut(rest, ":")
	if !ok {
		return c, fmt.Errorf("%w: no name length in %q", errPayload, payload)
	}
	n, err := strconv.Atoi(size)
	if err != nil || n < 1 || n > len(rest) || strconv.Itoa(n) != size {
		return c, fmt.Errorf("%w: name length %q", errPayload, size)
	}
	c.name, c.key = rest[:n], rest[n:]
	if (c.key == "") != (c.op == opReleased) {
		return c, fmt.Errorf("%w: key %q for op %q", errPayload, c.key, c.op)
	}
	return c, nil
}
