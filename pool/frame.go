package pool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frames are the unit of the wire protocol (PROTOCOL.md): a 20-byte
// header, then the context bytes, then the body bytes.
//
//	offset size field
//	0      2    magic 0xFF 0x53
//	2      1    version (1)
//	3      1    flags: flagError, flagControl
//	4      4    context length, big-endian
//	8      4    body length, big-endian
//	12     4    CRC-32 (IEEE) of context then body
//	16     4    CRC-32 (IEEE) of bytes 0..15
//
// 0xFF never occurs in UTF-8 text, so stray output is caught by the first
// byte; the header checksum catches a corrupt or misaligned header before
// its sizes are trusted, and the payload checksum a corrupt payload.
const (
	frameHeaderSize = 20
	frameMagic0     = 0xFF
	frameMagic1     = 0x53
	frameVersion    = 1

	flagError   = 0x01 // a reply whose body is the handler's error message
	flagControl = 0x02 // a control frame: its context is a JSON object
	knownFlags  = flagError | flagControl

	// coalesceLimit is the largest frame written with a single write.
	coalesceLimit = 64 << 10
)

// ErrProtocol is wrapped by the errors of a stream that broke the wire
// protocol: stray output, a corrupt header or payload, an unknown version
// or flag, or a missing handshake.
var ErrProtocol = errors.New("pool: protocol violation")

// frame is one decoded frame.
type frame struct {
	flags   byte
	context []byte
	body    []byte
}

// frameWriter writes frames to a stream, reusing one buffer for small
// frames so each goes out in one write.
type frameWriter struct {
	w   io.Writer
	buf []byte
}

// write writes one frame.
func (fw *frameWriter) write(flags byte, context, body []byte) error {
	size := frameHeaderSize + len(context) + len(body)
	if size <= coalesceLimit {
		fw.buf = appendFrame(fw.buf[:0], flags, context, body)
		_, err := fw.w.Write(fw.buf)
		return err
	}
	fw.buf = append(fw.buf[:0], make([]byte, frameHeaderSize)...)
	putHeader(fw.buf, flags, context, body)
	for _, part := range [][]byte{fw.buf, context, body} {
		if _, err := fw.w.Write(part); err != nil {
			return err
		}
	}
	return nil
}

// appendFrame appends the encoded frame to dst.
func appendFrame(dst []byte, flags byte, context, body []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderSize)...)
	putHeader(dst[start:], flags, context, body) // in place: a local header would escape
	dst = append(dst, context...)
	return append(dst, body...)
}

func putHeader(h []byte, flags byte, context, body []byte) {
	h[0], h[1], h[2], h[3] = frameMagic0, frameMagic1, frameVersion, flags
	binary.BigEndian.PutUint32(h[4:], uint32(len(context)))
	binary.BigEndian.PutUint32(h[8:], uint32(len(body)))
	sum := crc32.Update(crc32.ChecksumIEEE(context), crc32.IEEETable, body)
	binary.BigEndian.PutUint32(h[12:], sum)
	binary.BigEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:16]))
}

// readFrame reads one frame whose context and body together are at most
// maxPayload bytes. A stream that ends cleanly before a frame returns
// io.EOF; a broken frame returns an error wrapping ErrProtocol, or
// ErrPayloadTooLarge for one over the limit (its payload is not read).
func readFrame(r *bufio.Reader, maxPayload int) (frame, error) {
	// The header is looked at in r's buffer: a local array would escape.
	first, err := r.Peek(1)
	if err != nil {
		return frame{}, err // io.EOF: the stream ended between frames
	}
	if b := first[0]; b != frameMagic0 {
		_, _ = r.Discard(1)
		return frame{}, strayOutput(b, r)
	}
	h, err := r.Peek(frameHeaderSize)
	if err != nil {
		return frame{}, fmt.Errorf("%w: stream ended inside a frame header: %w", ErrProtocol, unexpected(err))
	}
	if h[1] != frameMagic1 {
		return frame{}, fmt.Errorf("%w: stray output or corrupt stream: bad header % x", ErrProtocol, h[:])
	}
	if got, want := binary.BigEndian.Uint32(h[16:]), crc32.ChecksumIEEE(h[:16]); got != want {
		return frame{}, fmt.Errorf("%w: corrupt frame header % x (checksum %08x, computed %08x)", ErrProtocol, h[:], got, want)
	}
	if h[2] != frameVersion {
		return frame{}, fmt.Errorf("%w: frame version %d, want %d", ErrProtocol, h[2], frameVersion)
	}
	if h[3]&^knownFlags != 0 {
		return frame{}, fmt.Errorf("%w: unknown frame flags %#02x", ErrProtocol, h[3])
	}
	contextLen := uint64(binary.BigEndian.Uint32(h[4:]))
	bodyLen := uint64(binary.BigEndian.Uint32(h[8:]))
	if contextLen+bodyLen > uint64(maxPayload) {
		return frame{}, fmt.Errorf("%w: a frame of %d bytes (context %d, body %d), limit %d", ErrPayloadTooLarge, contextLen+bodyLen, contextLen, bodyLen, maxPayload)
	}
	flags, payloadSum := h[3], binary.BigEndian.Uint32(h[12:])
	_, _ = r.Discard(frameHeaderSize) // h is r's buffer: done with it
	payload := make([]byte, contextLen+bodyLen)
	if _, err := io.ReadFull(r, payload); err != nil {
		return frame{}, fmt.Errorf("%w: stream ended inside a frame payload: %w", ErrProtocol, unexpected(err))
	}
	if want := crc32.ChecksumIEEE(payload); payloadSum != want {
		return frame{}, fmt.Errorf("%w: corrupt frame payload (checksum %08x, computed %08x)", ErrProtocol, payloadSum, want)
	}
	return frame{flags: flags, context: payload[:contextLen:contextLen], body: payload[contextLen:]}, nil
}

// strayOutput describes bytes that are not a frame: the first one and
// whatever else is already buffered, up to a line.
func strayOutput(first byte, r *bufio.Reader) error {
	more, _ := r.Peek(min(r.Buffered(), 63))
	return fmt.Errorf("%w: stray output on the stream: %q", ErrProtocol, append([]byte{first}, more...))
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
