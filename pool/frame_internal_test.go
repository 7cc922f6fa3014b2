package pool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// frameCase is a frame of given sizes, filled with a recognisable pattern.
type frameCase struct {
	name                string
	flags               byte
	contextLen, bodyLen int
}

var frameCases = []frameCase{
	{"empty", 0, 0, 0},
	{"one body byte", 0, 0, 1},
	{"one context byte", flagControl, 1, 0},
	{"context only", flagControl, 300, 0},
	{"error reply", flagError, 0, 42},
	{"just under the coalesce limit", 0, 10, coalesceLimit - frameHeaderSize - 11},
	{"at the coalesce limit", 0, 10, coalesceLimit - frameHeaderSize - 10},
	{"just over the coalesce limit", 0, 10, coalesceLimit - frameHeaderSize - 9},
	{"over 10 MB", 0, 1000, 10<<20 + 7},
}

func (c frameCase) payload() (context, body []byte) {
	return pattern(c.contextLen, 'c'), pattern(c.bodyLen, 'b')
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// countingWriter counts the writes that reach it.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

func TestFrameWriterFramesReadBackThroughABuffer(t *testing.T) {
	var stream countingWriter
	fw := frameWriter{w: &stream}
	for _, c := range frameCases {
		context, body := c.payload()
		before := stream.writes
		require.NoError(t, fw.write(c.flags, context, body), c.name)
		if frameHeaderSize+c.contextLen+c.bodyLen <= coalesceLimit {
			require.Equal(t, 1, stream.writes-before, "%s: a small frame goes out in one write", c.name)
		}
	}
	r := bufio.NewReader(&stream.Buffer)
	for _, c := range frameCases {
		f, err := readFrame(r, 16<<20)
		require.NoError(t, err, c.name)
		requireFrame(t, c, f)
	}
	_, err := readFrame(r, 16<<20)
	require.ErrorIs(t, err, io.EOF, "the stream ends cleanly between frames")
}

func TestFrameWriterFramesReadBackThroughAPipe(t *testing.T) {
	pr, pw := io.Pipe()
	written := make(chan error, 1)
	go func() {
		fw := frameWriter{w: pw}
		var err error
		for _, c := range frameCases {
			context, body := c.payload()
			if err = fw.write(c.flags, context, body); err != nil {
				break
			}
		}
		pw.CloseWithError(err)
		written <- err
	}()
	defer func() { require.NoError(t, <-written) }()
	defer pr.Close() // unblocks the writer if a read fails

	r := bufio.NewReader(pr)
	for _, c := range frameCases {
		f, err := readFrame(r, 16<<20)
		require.NoError(t, err, c.name)
		requireFrame(t, c, f)
	}
	_, err := readFrame(r, 16<<20)
	require.ErrorIs(t, err, io.EOF)
}

func requireFrame(t *testing.T, c frameCase, f frame) {
	t.Helper()
	context, body := c.payload()
	require.Equal(t, c.flags, f.flags, c.name)
	require.True(t, bytes.Equal(context, f.context), "%s: context differs", c.name)
	require.True(t, bytes.Equal(body, f.body), "%s: body differs", c.name)
}

func TestReadFrameAcceptsAPayloadOfExactlyTheLimit(t *testing.T) {
	encoded := appendFrame(nil, 0, []byte("ctx"), []byte("body"))

	f, err := readFrame(bufio.NewReader(bytes.NewReader(encoded)), 7)
	require.NoError(t, err)
	require.Equal(t, "ctx", string(f.context))
	require.Equal(t, "body", string(f.body))

	_, err = readFrame(bufio.NewReader(bytes.NewReader(encoded)), 6)
	require.ErrorIs(t, err, ErrPayloadTooLarge)
}

// rawHeader is a header with the given fields and valid checksums, so that
// only the field under test is wrong.
func rawHeader(version, flags byte, contextLen, bodyLen uint32, payload []byte) []byte {
	h := make([]byte, frameHeaderSize)
	h[0], h[1], h[2], h[3] = frameMagic0, frameMagic1, version, flags
	binary.BigEndian.PutUint32(h[4:], contextLen)
	binary.BigEndian.PutUint32(h[8:], bodyLen)
	binary.BigEndian.PutUint32(h[12:], crc32.ChecksumIEEE(payload))
	binary.BigEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:16]))
	return h
}

func TestReadFrameRejectsProtocolViolations(t *testing.T) {
	valid := appendFrame(nil, 0, []byte(`{"op":"echo"}`), []byte("hello, pool"))
	flipped := func(i int, bit byte) []byte {
		b := bytes.Clone(valid)
		b[i] ^= bit
		return b
	}
	cases := []struct {
		name    string
		stream  []byte
		wantMsg string
	}{
		{"stray text before a frame", append([]byte("debug: starting\n"), valid...), "debug: starting"},
		{"stray JSON before a frame", append([]byte(`{"log":1}`), valid...), "stray output"},
		{"flipped payload bit", flipped(frameHeaderSize+3, 0x10), "corrupt frame payload"},
		{"flipped last body bit", flipped(len(valid)-1, 0x01), "corrupt frame payload"},
		{"unknown version", append(rawHeader(2, 0, 0, 0, nil), valid...), "version 2"},
		{"version zero", rawHeader(0, 0, 0, 0, nil), "version 0"},
		{"unknown flag", rawHeader(frameVersion, 0x04, 0, 0, nil), "flags"},
		{"high flag", rawHeader(frameVersion, 0x80|flagError, 0, 0, nil), "flags"},
		{"truncated payload", valid[:len(valid)-1], "inside a frame payload"},
		{"header only", valid[:frameHeaderSize], "inside a frame payload"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := readFrame(bufio.NewReader(bytes.NewReader(c.stream)), 1024)
			require.ErrorIs(t, err, ErrProtocol)
			require.Contains(t, err.Error(), c.wantMsg)
		})
	}
}

func TestReadFrameDetectsEveryFlippedHeaderBit(t *testing.T) {
	valid := appendFrame(nil, flagControl, []byte(`{"pid":42}`), nil)
	for i := range frameHeaderSize {
		for bit := range 8 {
			b := bytes.Clone(valid)
			b[i] ^= 1 << bit
			_, err := readFrame(bufio.NewReader(bytes.NewReader(b)), 1<<20)
			require.ErrorIs(t, err, ErrProtocol, "byte %d bit %d", i, bit)
		}
	}
}

func TestReadFrameReportsTruncatedHeaderAsUnexpectedEOF(t *testing.T) {
	valid := appendFrame(nil, 0, nil, []byte("x"))
	for n := 1; n < len(valid); n++ {
		_, err := readFrame(bufio.NewReader(bytes.NewReader(valid[:n])), 1024)
		require.ErrorIs(t, err, ErrProtocol, "%d bytes", n)
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, "%d bytes", n)
	}
	_, err := readFrame(bufio.NewReader(bytes.NewReader(nil)), 1024)
	require.Equal(t, io.EOF, err, "no byte at all is a clean end of stream")
}

// untouchable fails the test if it is read: readFrame must not read the
// payload of a frame it refuses.
type untouchable struct{ read bool }

func (u *untouchable) Read([]byte) (int, error) {
	u.read = true
	return 0, errors.New("read past the header")
}

func TestReadFrameRefusesOversizeFrameWithoutReadingOrAllocatingIt(t *testing.T) {
	cases := []struct {
		name                string
		contextLen, bodyLen uint32
	}{
		{"4 GiB body", 0, 1<<32 - 1},
		{"4 GiB context", 1<<32 - 1, 0},
		{"8 GiB in all", 1<<32 - 1, 1<<32 - 1},
		{"one over the limit", 512, 513},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rest := &untouchable{}
			r := bufio.NewReader(io.MultiReader(bytes.NewReader(rawHeader(frameVersion, 0, c.contextLen, c.bodyLen, nil)), rest))

			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := readFrame(r, 1024)
			runtime.ReadMemStats(&after)

			require.ErrorIs(t, err, ErrPayloadTooLarge)
			require.False(t, rest.read, "readFrame read past the header of a frame it refused")
			require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<10), "readFrame allocated the refused payload")
		})
	}
}

func TestReadFrameQuotesStrayOutput(t *testing.T) {
	_, err := readFrame(bufio.NewReader(strings.NewReader("Traceback (most recent call last):\n")), 1024)
	require.ErrorIs(t, err, ErrProtocol)
	require.Contains(t, err.Error(), `"Traceback (most recent call last):`)
}
