package pool

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// The parts of the wire protocol (PROTOCOL.md) beyond the frame format,
// shared by the pool side and the worker side.
const (
	// envSocket names the address a worker dials: "unix:<path>" or
	// "tcp:<host:port>". Absent, the worker speaks frames on stdin/stdout.
	envSocket = "SUPERVISOR_POOL_SOCKET"
	// envMaxPayload is the largest context+body of a frame, in decimal
	// bytes; defaultMaxPayload when absent.
	envMaxPayload     = "SUPERVISOR_POOL_MAX_PAYLOAD"
	defaultMaxPayload = 64 << 20

	// stopControl is the context of the control frame that stops a worker.
	// It is the same JSON object as StopRequest, which travels the other way
	// in a reply.
	stopControl = `{"stop":true}`
)

// handshakeContext is the context of a worker's first frame, a control
// frame: {"pid":N}, by which the pool checks that the process that speaks
// is the one it spawned.
func handshakeContext(pid int) []byte {
	context := strconv.AppendInt([]byte(`{"pid":`), int64(pid), 10)
	return append(context, '}')
}

// parseHandshake returns the pid of a handshake's context. A context that
// is not a JSON object with a positive integer "pid" is a protocol
// violation.
func parseHandshake(context []byte) (pid int, err error) {
	// A map rather than a struct: encoding/json matches struct fields
	// case-insensitively, and the key is exactly "pid".
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(context, &fields); err != nil || fields == nil {
		return 0, fmt.Errorf("%w: handshake context %q is not a JSON object", ErrProtocol, context)
	}
	raw, ok := fields["pid"]
	if !ok {
		return 0, fmt.Errorf("%w: handshake context %q has no \"pid\"", ErrProtocol, context)
	}
	pid, err = strconv.Atoi(string(raw))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: handshake pid %s is not a positive integer", ErrProtocol, raw)
	}
	return pid, nil
}
