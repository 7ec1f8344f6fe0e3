"""A TVM RPC server that goes on serving after a session crashes.

TVM 0.27's Python RPC server runs each session in a forked process, and when that process
dies of a signal (a candidate kernel that segfaults) its listening loop raises and the server
stops serving: every later request for the device waits until its time-out. That is one
crashing candidate costing the whole search. This server is TVM's, run in this process (TVM's
`rpc_server` runs it in a Popen child, which also fails under qemu-user), with the session
handler wrapped so that a session that ends abnormally is logged and the server goes on.

    python -m ago_search.measure.rpc_server --host 127.0.0.1 --port 9090 \\
        --tracker 127.0.0.1:9190 --key pixel7

Use it where the server runs Python with TVM (this machine, an emulator, a board with a
full TVM install); a phone running TVM's Android RPC app has its own server.

It listens on 127.0.0.1 unless given another `--host`. A TVM RPC server has no
authentication: it loads and runs any library a client uploads, so any client that can reach
its address can run native code on this machine. Listen on another address only on a network
you trust (it is then logged as a warning); prefer an SSH tunnel to a board.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_HOST", "is_loopback", "main", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether listening on `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _survive_crashed_sessions() -> None:
    from tvm.rpc import server

    original = server._serving
    if getattr(original, "_ago_search_wrapped", False):
        return

    def serving(sock: Any, addr: Any, opts: Any, load_library: Any) -> None:
        cwd = os.getcwd()
        try:
            original(sock, addr, opts, load_library)
        except RuntimeError as err:  # "Child process ... exited unsuccessfully"
            log.warning("RPC session from %s ended abnormally (%s); serving on", addr, err)
            os.chdir(cwd)  # the original returns to it only on success
            with contextlib.suppress(OSError):
                sock.close()

    serving._ago_search_wrapped = True  # type: ignore[attr-defined]
    server._serving = serving


def serve(
    host: str,
    port: int,
    port_end: int,
    tracker: str | None,
    key: str,
    silent: bool = False,
) -> None:
    """Serve RPC sessions in this process until it is killed."""
    from tvm.rpc import server

    _survive_crashed_sessions()
    tracker_addr = None
    if tracker:
        tracker_host, _, tracker_port = tracker.rpartition(":")
        tracker_addr = (tracker_host, int(tracker_port))
    bound = server._popen_start_rpc_server(
        host, port, port_end, tracker_addr=tracker_addr, key=key, silent=silent
    )
    log.info("RPC server on %s:%d, key %r, tracker %s", host, bound, key, tracker)
    if not is_loopback(host):
        log.warning(
            "RPC server listening on %s:%d, not on loopback: any client that can reach "
            "%s:%d can upload and run native code on this machine (TVM's RPC server has no "
            "authentication)",
            host,
            bound,
            host,
            bound,
        )
    server.PopenRPCServerState.current.thread.join()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default %(default)s: this machine only; any other lets "
        "every client that reaches it upload and run native code here)",
    )
    parser.add_argument("--port", type=int, default=9090, help="first port to try")
    parser.add_argument("--port-end", type=int, default=9199, help="end of the ports to try")
    parser.add_argument("--tracker", help="host:port of the RPC tracker to register with")
    parser.add_argument("--key", default="", help="the device's key at the tracker")
    parser.add_argument(
        "--silent", action="store_true", help="log only errors and this server's warnings"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.tracker and not args.key:
        parser.error("--tracker needs --key")
    logging.basicConfig(level=logging.ERROR if args.silent else logging.INFO)
    if args.silent:  # crashed sessions and a listening address open to others still show
        log.setLevel(logging.WARNING)
    serve(args.host, args.port, args.port_end, args.tracker, args.key, args.silent)


if __name__ == "__main__":
    main()
