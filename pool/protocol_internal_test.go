package pool

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestHandshakeContextParsesBackToItsPid(t *testing.T) {
	for _, pid := range []int{1, 4242, 1<<22 + 1, 1<<31 - 1} {
		pid2, err := parseHandshake(handshakeContext(pid))
		require.NoError(t, err)
		require.Equal(t, pid, pid2)
	}
	require.Equal(t, `{"pid":4242}`, string(handshakeContext(4242)))
}

func TestParseHandshakeAcceptsAnyJSONObjectWithAPositivePid(t *testing.T) {
	pid, err := parseHandshake([]byte(` { "version": 2, "pid" : 77 } `))
	require.NoError(t, err)
	require.Equal(t, 77, pid)
}

func TestParseHandshakeRejectsAnythingButAPositiveIntegerPid(t *testing.T) {
	for _, context := range []string{
		``, `null`, `[]`, `42`, `"pid"`, `{`, `{}`, `{"PID":42}`, `{"pid":null}`,
		`{"pid":"42"}`, `{"pid":0}`, `{"pid":-3}`, `{"pid":4.2}`, `{"pid":1e3}`,
		`{"pid":99999999999999999999}`, `{"pid":42}garbage`,
	} {
		_, err := parseHandshake([]byte(context))
		require.ErrorIs(t, err, ErrProtocol, "context %q", context)
	}
}

func TestStopControlIsTheStopRequestObject(t *testing.T) {
	require.Equal(t, StopRequest, stopControl)
	require.True(t, isStopControl([]byte(stopControl)))
	for _, context := range []string{`{"stop":false}`, `{"stop":"true"}`, `{}`, `stop`, ``} {
		require.False(t, isStopControl([]byte(context)), "context %q", context)
	}
}

// The worked example of PROTOCOL.md, byte for byte.
func TestFrameEncodingMatchesTheProtocolDocument(t *testing.T) {
	cases := []struct {
		name          string
		flags         byte
		context, body string
		hexDump       string
	}{
		{"request", 0, `{"op":"upper"}`, "hi", `
			ff 53 01 00 00 00 00 0e  00 00 00 02 b2 e0 d0 35
			98 31 c2 c0 7b 22 6f 70  22 3a 22 75 70 70 65 72
			22 7d 68 69`},
		{"handshake", flagControl, string(handshakeContext(4242)), "", `
			ff 53 01 02 00 00 00 0c  00 00 00 00 b1 33 ff 0b
			e2 5c 0d 2c 7b 22 70 69  64 22 3a 34 32 34 32 7d`},
		{"error reply", flagError, "", "disk full", `
			ff 53 01 01 00 00 00 00  00 00 00 09 97 6b 6e 01
			db cb 2d 28 64 69 73 6b  20 66 75 6c 6c`},
	}
	for _, c := range cases {
		want, err := hex.DecodeString(strings.Join(strings.Fields(c.hexDump), ""))
		require.NoError(t, err)
		require.Equal(t, want, appendFrame(nil, c.flags, []byte(c.context), []byte(c.body)), c.name)
	}
}
