// Goworker is the Go twin of examples/pool/worker.py: a pool worker written
// with pool.Serve. The pool starts it and speaks to it on its stdin and
// stdout (or on the socket in SUPERVISOR_POOL_SOCKET when a SocketFactory
// starts it).
//
// Each request's context is a JSON object naming an operation:
//
//	{"op": "echo"}                    the body back (also: no or empty context)
//	{"op": "upper"}                   the body upper-cased
//	{"op": "fail", "message": "..."}  an error reply with that message
//	{"op": "crash"}                   exit with status 3 without replying
//	{"op": "stop"}                    a reply asking the pool to replace this worker
//	{"op": "sleep", "seconds": 0.5}   sleep, then echo
//	{"op": "print"}                   a line on stderr, then echo
//
// Replies other than errors and stop carry the context
// {"worker":"go","pid":<pid>}. Stdout carries the frames, so this program
// writes nothing else to it: its messages go to stderr, which the pool
// captures line by line.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/gosupervise/supervisor/pool"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := pool.Serve(ctx, handle); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "goworker:", err)
		stop()
		os.Exit(2)
	}
}

// request is a job's context.
type request struct {
	Op      string  `json:"op"`
	Message string  `json:"message"`
	Seconds float64 `json:"seconds"`
}

// handle runs one job; its error goes back to Pool.Exec as a JobError.
func handle(ctx context.Context, rqs pool.Payload) (pool.Payload, error) {
	req := request{Op: "echo"}
	if len(bytes.TrimSpace(rqs.Context)) > 0 {
		if err := json.Unmarshal(rqs.Context, &req); err != nil {
			return pool.Payload{}, fmt.Errorf("bad request: %w", err)
		}
	}
	reply := pool.Payload{
		Context: []byte(`{"worker":"go","pid":` + strconv.Itoa(os.Getpid()) + `}`),
		Body:    rqs.Body,
	}
	switch req.Op {
	case "echo":
		return reply, nil
	case "upper":
		reply.Body = bytes.ToUpper(rqs.Body)
		return reply, nil
	case "fail":
		if req.Message == "" {
			req.Message = "failed"
		}
		return pool.Payload{}, errors.New(req.Message)
	case "crash":
		os.Exit(3)
	case "stop":
		return pool.Payload{Context: []byte(pool.StopRequest)}, nil
	case "sleep":
		select {
		case <-time.After(time.Duration(req.Seconds * float64(time.Second))):
		case <-ctx.Done():
			return pool.Payload{}, ctx.Err()
		}
		return reply, nil
	case "print":
		fmt.Fprintln(os.Stderr, "a line on stderr from the Go worker")
		return reply, nil
	}
	return pool.Payload{}, errors.New("unknown op")
}
