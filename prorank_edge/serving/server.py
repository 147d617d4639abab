"""Running the app on uvicorn: the listening socket, startup and the graceful SIGTERM shutdown."""

from __future__ import annotations

import socket

from ..errors import ProrankError
from .app import ServeSettings, create_app


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one). Bound before the model loads, so a taken port fails in
    a second, not after a minute of loading; it only listens once uvicorn is up."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ProrankError(f"--host {host}: {exc.strerror or exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ProrankError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(reranker, settings: ServeSettings, sock: socket.socket, log_level: str = "info",
               access_log: bool = False) -> None:
    """Serve until SIGTERM or Ctrl-C: then stop accepting, finish the requests in flight, drain the batcher and
    return."""
    import uvicorn

    app = create_app(reranker, settings)
    host, port = sock.getsockname()[:2]
    # No graceful-shutdown timeout: requests in flight always finish (each is bounded by --max-documents).
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the handler it
        # replaced (the CLI's, which raises): the shutdown is done, so this is a normal end.
        if not server.should_exit:
            raise
    if not server.started:
        raise ProrankError("the server did not start (see the log above)")
