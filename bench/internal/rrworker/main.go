// Rrworker is the worker process of the RoadRunner side of the pool
// benchmarks (bench/pool_test.go): a RoadRunner worker over stdin and
// stdout that echoes every request, context and body.
//
// It speaks goridge v3 frames: a 12-byte header (more with options) whose
// CRC covers the header only. RoadRunner opens with a control frame naming
// its own pid and wants a control frame naming the worker's back; then
// each request is a frame whose one option is the context length, and the
// reply must be shaped alike. A control frame {"stop":true} asks the
// worker to exit.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/roadrunner-server/goridge/v3/pkg/frame"
	"github.com/roadrunner-server/goridge/v3/pkg/pipe"
	"github.com/roadrunner-server/goridge/v3/pkg/relay"
)

// control is the payload of a control frame: the handshake names a pid,
// the last frame asks to stop.
type control struct {
	Pid  int  `json:"pid,omitempty"`
	Stop bool `json:"stop,omitempty"`
}

// bufferedStdin reads stdin through a buffer so that a frame's header,
// options and payload do not cost a read each.
type bufferedStdin struct {
	*bufio.Reader
	io.Closer
}

func main() {
	rl := pipe.NewPipeRelay(bufferedStdin{bufio.NewReader(os.Stdin), os.Stdin}, os.Stdout)
	if err := serve(rl); err != nil {
		fmt.Fprintln(os.Stderr, "rrworker:", err) // stdout carries the frames
		os.Exit(1)
	}
}

// serve answers the handshake, then echoes requests until a stop frame or
// the end of stdin.
func serve(rl relay.Relay) error {
	in := frame.NewFrame()
	if err := rl.Receive(in); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if in.ReadFlags()&frame.CONTROL == 0 {
		return errors.New("handshake: not a control frame")
	}
	if err := sendControl(rl, control{Pid: os.Getpid()}); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	for {
		in.Reset()
		switch err := rl.Receive(in); {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return err
		}
		if in.ReadFlags()&frame.CONTROL != 0 {
			var c control
			if err := json.Unmarshal(in.Payload(), &c); err != nil {
				return fmt.Errorf("control frame %q: %w", in.Payload(), err)
			}
			if c.Stop {
				return nil
			}
			continue
		}
		options := in.ReadOptions(in.Header())
		if len(options) != 1 || int(options[0]) > len(in.Payload()) {
			return fmt.Errorf("request with options %v and a payload of %d bytes", options, len(in.Payload()))
		}
		if err := sendReply(rl, options[0], in.Payload()); err != nil {
			return err
		}
	}
}

// sendReply sends payload, context then body, as a reply whose context is
// contextLen bytes long.
func sendReply(rl relay.Relay, contextLen uint32, payload []byte) error {
	out := frame.NewFrame()
	out.WriteVersion(out.Header(), frame.Version1)
	out.WriteFlags(out.Header(), frame.CodecRaw)
	out.WriteOptions(out.HeaderPtr(), contextLen)
	out.WritePayloadLen(out.Header(), uint32(len(payload)))
	out.WritePayload(payload)
	out.WriteCRC(out.Header())
	return rl.Send(out)
}

// sendControl sends c as a control frame.
func sendControl(rl relay.Relay, c control) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	out := frame.NewFrame()
	out.WriteVersion(out.Header(), frame.Version1)
	out.WriteFlags(out.Header(), frame.CONTROL, frame.CodecJSON)
	out.WritePayloadLen(out.Header(), uint32(len(data)))
	out.WritePayload(data)
	out.WriteCRC(out.Header())
	return rl.Send(out)
}
