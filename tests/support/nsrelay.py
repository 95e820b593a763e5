"""A counting TCP relay on one loopback address; optionally in front of a server jailed in its own network
namespace.

Why: ``gnutls-serv`` (the only server here that still offers RC4 and 3DES) has no listen-address option
and binds the wildcard address; the tests must never listen beyond loopback. So the relay binds
``HOST:PORT`` on loopback first, then moves itself into a fresh network namespace (``unshare(CLONE_NEWNET)``:
only a ``lo`` exists there), starts the server there, and relays every connection to it. The server's
wildcard socket is then reachable from nothing but this relay.

Without a command it is a plain counting proxy in front of ``--to HOST:PORT`` (the cost benchmark counts
connections at the server side with it). Every accepted connection appends one line to ``--count-file``.

Run: ``python -m tests.support.nsrelay --listen 127.0.0.41:PORT --count-file F [--to H:P] [-- CMD …]``;
``{port}`` in CMD is replaced by the inner port. Prints ``ready`` on stdout once the target accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import TextIO

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
INNER_PORT = 4433  # in the private namespace nothing else listens


def _unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    # ip link set lo up, without needing iproute2: SIOCSIFFLAGS on a socket of the new namespace.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))


def _die_with_parent() -> None:
    """In the child: SIGTERM when the relay dies, so no server outlives it in an unreachable namespace."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop the server child in ``finally``


def _wait_accepts(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def _relay(listener: socket.socket, target: tuple[str, int], counter: TextIO) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        peer = cw.get_extra_info("peername")
        counter.write(f"{time.time():.3f} {peer[0]}:{peer[1]}\n")
        try:
            sr, sw = await asyncio.open_connection(*target)
        except OSError:
            cw.transport.abort()
            return
        await asyncio.gather(_pipe(cr, sw), _pipe(sr, cw))
        for w in (cw, sw):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", required=True, help="loopback HOST:PORT to accept on")
    p.add_argument("--count-file", required=True, help="one line appended per accepted connection")
    p.add_argument("--to", help="HOST:PORT to relay to (proxy mode, no command)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- server command, {port} = inner port")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host.startswith("127."):
        p.error("--listen must be a 127.0.0.0/8 address")
    signal.signal(signal.SIGTERM, _interrupt)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    command = [c for c in args.command if c != "--"]
    child: subprocess.Popen[bytes] | None = None
    if command:
        _unshare_net()  # from here on, every new socket (and the child's) is in the private namespace
        target = ("127.0.0.1", INNER_PORT)
        argv_ = [c.replace("{port}", str(INNER_PORT)) for c in command]
        child = subprocess.Popen(
            argv_,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=sys.stderr,
            preexec_fn=_die_with_parent,  # no threads in this process
        )
    else:
        thost, _, tport = (args.to or "").rpartition(":")
        if not thost.startswith("127."):
            p.error("--to must be a 127.0.0.0/8 HOST:PORT")
        target = (thost, int(tport))
    try:
        _wait_accepts(*target, timeout=15)
        print("ready", flush=True)
        with open(args.count_file, "a", buffering=1) as counter:
            asyncio.run(_relay(listener, target, counter))
    except KeyboardInterrupt:
        pass
    finally:
        if child is not None:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
            if child.poll() is None:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
