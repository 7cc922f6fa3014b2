#!/usr/bin/env python3
"""A pool worker in Python, standard library only.

It speaks the wire protocol of github.com/gosupervise/supervisor/pool
(pool/PROTOCOL.md): frames on stdin/stdout, or on a connection to the
address in SUPERVISOR_POOL_SOCKET ("unix:<path>" or "tcp:<host:port>") when
that is set. On stdin/stdout the frame stream keeps the real stdout to
itself: file descriptor 1 and sys.stdout are pointed at stderr, so print()
and child processes cannot corrupt it. Logs go to stderr, which the pool
captures line by line.

Each request's context is a JSON object naming an operation:

    {"op": "echo"}                    the body back (also: no or empty context)
    {"op": "upper"}                   the body upper-cased (ASCII)
    {"op": "fail", "message": "..."}  an error reply with that message
    {"op": "crash"}                   exit with status 3 without replying
    {"op": "stop"}                    a reply asking the pool to replace this worker
    {"op": "sleep", "seconds": 0.5}   sleep, then echo
    {"op": "print"}                   print to (what looks like) stdout, then echo

Replies other than errors and stop carry the context
{"worker": "python", "pid": <pid>}. An unknown op is an error reply
"unknown op". A stop control frame or the end of the input exits with
status 0; a broken frame from the pool exits with status 2.
"""

import json
import os
import socket
import struct
import sys
import time
import zlib

MAGIC = b"\xff\x53"
VERSION = 1
FLAG_ERROR = 0x01
FLAG_CONTROL = 0x02
# magic, version, flags, context length, body length, payload CRC-32
HEAD = struct.Struct(">2sBBIII")
CRC = struct.Struct(">I")
HEADER_SIZE = HEAD.size + CRC.size  # 20
STOP = b'{"stop":true}'
DEFAULT_MAX_PAYLOAD = 64 << 20


class ProtocolError(Exception):
    """The pool sent something that is not a valid frame."""


class JobFailed(Exception):
    """The handler failed: the message goes back in an error reply."""


def encode(flags, context=b"", body=b""):
    payload_crc = zlib.crc32(body, zlib.crc32(context))
    head = HEAD.pack(MAGIC, VERSION, flags, len(context), len(body), payload_crc)
    return head + CRC.pack(zlib.crc32(head)) + context + body


def read_exact(stream, size):
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(stream, max_payload):
    """Returns (flags, context, body), or None at the end of the input."""
    header = read_exact(stream, HEADER_SIZE)
    if not header:
        return None
    if len(header) < HEADER_SIZE:
        raise ProtocolError("stream ended inside a frame header")
    magic, version, flags, context_len, body_len, payload_crc = HEAD.unpack_from(header)
    if magic != MAGIC:
        raise ProtocolError("not a frame: %r" % header)
    if CRC.unpack_from(header, HEAD.size)[0] != zlib.crc32(header[: HEAD.size]):
        raise ProtocolError("corrupt frame header %s" % header.hex())
    if version != VERSION:
        raise ProtocolError("frame version %d" % version)
    if flags & ~(FLAG_ERROR | FLAG_CONTROL):
        raise ProtocolError("unknown frame flags %#04x" % flags)
    if context_len + body_len > max_payload:
        raise ProtocolError("frame of %d bytes over the limit %d" % (context_len + body_len, max_payload))
    payload = read_exact(stream, context_len + body_len)
    if len(payload) < context_len + body_len:
        raise ProtocolError("stream ended inside a frame payload")
    if zlib.crc32(payload) != payload_crc:
        raise ProtocolError("corrupt frame payload")
    return flags, payload[:context_len], payload[context_len:]


def compact_json(value):
    return json.dumps(value, separators=(",", ":")).encode()


def handle(context, body):
    """Returns the reply (context, body), or raises JobFailed."""
    request = json.loads(context) if context.strip() else {}
    if not isinstance(request, dict):
        raise JobFailed("the context is not a JSON object")
    op = request.get("op", "echo")
    worker = compact_json({"worker": "python", "pid": os.getpid()})
    if op == "echo":
        return worker, body
    if op == "upper":
        return worker, body.upper()
    if op == "fail":
        raise JobFailed(str(request.get("message", "failed")))
    if op == "crash":
        sys.stderr.flush()
        os._exit(3)
    if op == "stop":
        return STOP, b""
    if op == "sleep":
        time.sleep(float(request.get("seconds", 0)))
        return worker, body
    if op == "print":
        print("print() from the worker goes to stderr")
        sys.stdout.flush()
        os.write(1, b"so does a write to file descriptor 1\n")
        return worker, body
    raise JobFailed("unknown op")


def is_stop(context):
    try:
        control = json.loads(context)
    except ValueError:
        return False
    return isinstance(control, dict) and control.get("stop") is True


def serve(rfile, wfile, max_payload):
    wfile.write(encode(FLAG_CONTROL, compact_json({"pid": os.getpid()})))
    wfile.flush()
    while True:
        frame = read_frame(rfile, max_payload)
        if frame is None:
            return  # end of input: the pool is gone or stopping us
        flags, context, body = frame
        if flags == FLAG_CONTROL:
            if is_stop(context):
                return
            raise ProtocolError("unknown control frame %r" % context)
        if flags != 0:
            raise ProtocolError("unexpected frame flags %#04x" % flags)
        try:
            reply = encode(0, *handle(context, body))
        except JobFailed as failure:
            reply = encode(FLAG_ERROR, b"", str(failure).encode())
        except (ValueError, TypeError) as bad:  # bad JSON or arguments
            reply = encode(FLAG_ERROR, b"", ("bad request: %s" % bad).encode())
        wfile.write(reply)
        wfile.flush()


def connect(address):
    network, _, where = address.partition(":")
    if network == "unix":
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(where)
        return conn
    if network == "tcp":
        host, _, port = where.rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)))
    raise SystemExit("SUPERVISOR_POOL_SOCKET=%r: want unix:<path> or tcp:<host:port>" % address)


def main():
    max_payload = int(os.environ.get("SUPERVISOR_POOL_MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD))
    address = os.environ.get("SUPERVISOR_POOL_SOCKET")
    if address:
        conn = connect(address)
        rfile, wfile = conn.makefile("rb"), conn.makefile("wb")
    else:
        # Keep the real stdout for frames; everything else written to
        # stdout, by print() or by the file descriptor, lands on stderr.
        wfile = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        rfile = sys.stdin.buffer
    try:
        serve(rfile, wfile, max_payload)
    except ProtocolError as violation:
        print("protocol violation: %s" % violation, file=sys.stderr)
        sys.exit(2)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the pool closed the stream: as good as a stop


if __name__ == "__main__":
    main()
