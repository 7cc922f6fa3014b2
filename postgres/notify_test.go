package postgres

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestChangePayloadRoundTrip(t *testing.T) {
	cases := []change{
		{op: opPut, version: 7, name: "jobs", key: "k1"},
		{op: opPutFree, version: 1, name: "a:b", key: "12:x y"},
		{op: opDelete, version: 1 << 40, name: "ü", key: strings.Repeat("k", MaxKeyLen)},
		{op: opReleased, name: "jobs"},
	}
	for _, c := range cases {
		got, err := parseChange(c.payload())
		require.NoError(t, err, c.payload())
		require.Equal(t, c, got)
	}
	long := change{op: opDelete, version: 1<<63 - 1, name: strings.Repeat("n", MaxNameLen), key: strings.Repeat("k", MaxKeyLen)}
	require.Less(t, len(long.payload()), 8000, "fits a NOTIFY payload")
}

func TestParseChangeRefusesMalformedPayloads(t *testing.T) {
	for _, p := range []string{
		"", "p", "p7", "x 1 4:jobsk", "p 1 4:jobs", "r 0 4:jobsk", "p -1 4:jobsk", "p 1 04:jobsk",
		"p 1 9:jobsk", "p 1 0:k", "p 1 four:jobsk", "p one 4:jobsk", "p 1 4jobsk", "p 99999999999999999999 4:jobsk",
	} {
		_, err := parseChange(p)
		require.ErrorIs(t, err, errPayload, "%q", p)
	}
}

func FuzzParseChange(f *testing.F) {
	f.Add("p 7 4:jobsk1")
	f.Add("n 1 3:a:b12:x y")
	f.Add("r 0 4:jobs")
	f.Add("d 3 1:x\x00")
	f.Fuzz(func(t *testing.T, payload string) {
		c, err := parseChange(payload)
		if err != nil {
			return
		}
		// What parses prints back the same.
		require.Equal(t, payload, c.payload())
	})
}
