"""The channel between the solver actor and rank 0 of its MPI job: Python objects pickled with
protocol 5, their arrays sent as out-of-band frames, so a solve's b and x (32 MB each on the 4M
grid) cross without the copies that pickling them in-band and copying into a message would make."""

from __future__ import annotations

import pickle
from typing import Any

import zmq


def send_obj(sock: zmq.Socket, obj: Any, flags: int = 0) -> None:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    sock.send_multipart([head, *(b.raw() for b in buffers)], flags=flags, copy=False)


def recv_obj(sock: zmq.Socket, flags: int = 0) -> Any:
    head, *frames = sock.recv_multipart(flags=flags, copy=False)
    return pickle.loads(head.buffer, buffers=[f.buffer for f in frames])
