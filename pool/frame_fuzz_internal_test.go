package pool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// fuzzMaxPayload is small so that headers claiming more than it are common
// and a payload allocated in spite of the limit would stand out.
const fuzzMaxPayload = 1024

// FuzzReadFrame feeds arbitrary streams to readFrame. It must never panic,
// must fail only with ErrProtocol, ErrPayloadTooLarge or a clean io.EOF,
// must not allocate the payload a header claims when that is over the
// limit, and every frame it accepts must re-encode to exactly the bytes it
// consumed: the format has a single encoding, so the pool and a worker
// never disagree on what they read.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{})
	f.Add(appendFrame(nil, 0, nil, nil))
	f.Add(appendFrame(nil, flagControl, handshakeContext(4242), nil))
	f.Add(appendFrame(appendFrame(nil, 0, []byte(`{"op":"echo"}`), []byte("hi")), flagError, nil, []byte("boom")))
	f.Add([]byte("stray output\n"))
	f.Add(rawHeader(frameVersion, 0, 1<<32-1, 1<<32-1, nil))

	f.Fuzz(func(t *testing.T, stream []byte) {
		stream = stream[:min(len(stream), 2*(frameHeaderSize+fuzzMaxPayload))] // see FuzzFrameRoundTrip
		r := bufio.NewReader(bytes.NewReader(stream))
		consumed := 0
		for {
			fr, allocated, err := readFrameMeasured(r, stream[consumed:])
			require.Less(t, allocated, uint64(16<<10), "allocated for a header claiming more than the limit")
			if err != nil {
				if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrPayloadTooLarge) {
					require.Equal(t, io.EOF, err)
					require.Equal(t, len(stream), consumed, "io.EOF only at the end of the stream")
				}
				return
			}
			require.LessOrEqual(t, cap(fr.context)+cap(fr.body), fuzzMaxPayload)
			require.Zero(t, fr.flags&^knownFlags)
			encoded := appendFrame(nil, fr.flags, fr.context, fr.body)
			require.Equal(t, stream[consumed:consumed+len(encoded)], encoded)
			consumed += len(encoded)
		}
	})
}

// readFrameMeasured reads a frame with the fuzz limit. When the rest of the
// stream starts with a header claiming more than the limit, it also returns
// the bytes readFrame allocated; measuring only then keeps the fuzzer fast,
// as runtime.ReadMemStats stops the world.
func readFrameMeasured(r *bufio.Reader, rest []byte) (f frame, allocated uint64, err error) {
	if len(rest) < frameHeaderSize || uint64(binary.BigEndian.Uint32(rest[4:]))+uint64(binary.BigEndian.Uint32(rest[8:])) <= fuzzMaxPayload {
		f, err = readFrame(r, fuzzMaxPayload)
		return f, 0, err
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f, err = readFrame(r, fuzzMaxPayload)
	runtime.ReadMemStats(&after)
	return f, after.TotalAlloc - before.TotalAlloc, err
}

// FuzzFrameRoundTrip writes frames of arbitrary content with frameWriter,
// twice in a row to exercise its buffer reuse, and reads them back. With
// big, the body is padded past coalesceLimit so that the frame is written
// in parts. Padding rather than large inputs keeps the fuzzer fast: inputs
// are cut to 1 KiB each so that big ones add no coverage and are never
// minimised, which takes minutes.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(byte(0), []byte{}, []byte{}, false)
	f.Add(byte(flagControl), []byte(stopControl), []byte{}, false)
	f.Add(byte(flagError), []byte{}, []byte("handler failed"), false)
	f.Add(byte(0), []byte(`{"op":"upper"}`), []byte{0xFF, 0x53}, true)

	f.Fuzz(func(t *testing.T, flags byte, context, body []byte, big bool) {
		flags &= knownFlags
		context, body = context[:min(len(context), 1<<10)], body[:min(len(body), 1<<10)]
		if big {
			body = append(body, pattern(coalesceLimit, 'x')...)
		}
		var stream bytes.Buffer
		fw := frameWriter{w: &stream}
		require.NoError(t, fw.write(flags, context, body))
		require.NoError(t, fw.write(flags^flagError, body, context))
		require.Equal(t, appendFrame(appendFrame(nil, flags, context, body), flags^flagError, body, context), stream.Bytes())

		r := bufio.NewReader(&stream)
		limit := len(context) + len(body)
		for _, want := range []frame{{flags, context, body}, {flags ^ flagError, body, context}} {
			got, err := readFrame(r, limit)
			require.NoError(t, err)
			require.Equal(t, want.flags, got.flags)
			require.True(t, bytes.Equal(want.context, got.context), "context differs")
			require.True(t, bytes.Equal(want.body, got.body), "body differs")
		}
		_, err := readFrame(r, limit)
		require.Equal(t, io.EOF, err)
	})
}
