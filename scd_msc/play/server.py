"""The web side of ``scd-msc play``: a Starlette app and uvicorn on a bound socket.

Routes: ``GET /`` the page (``page.html``), ``WebSocket /ws`` the game. Protocol (JSON
text messages; each frame is a JSON ``frame`` message followed by one binary message,
its PNG)::

    server -> page   {"type": "info", "actions": {"names", "keys", "idle"}, ...}  on connect
    page -> server   {"type": "reset", "start": "clip" | "blank"}
    server -> page   frame + PNG per prompt frame, then {"type": "ready"}
    page -> server   {"type": "step", "action": ID}
    server -> page   {"type": "frame", "index", "ms", "action", "prompt": false} + PNG
    server -> page   {"type": "error", "message": "..."}  for a bad request (the page stays)

The page asks for the next frame when the last one has arrived, so frames never queue:
the frame rate is the model's. One page plays at a time; a second one is told so and
closed. Model work runs on one worker thread (:mod:`scd_msc.play.game` says why).

Starlette and uvicorn are the extra ``play``: imported here only, on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, AsyncIterator, Callable

from scd_msc.play.game import Game

INSTALL_HINT = "pip install 'scd_msc[play]' (or: pip install starlette uvicorn websockets)"


def import_web() -> Any:
    """Starlette, or an ImportError that says how to install the extra."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the extra 'play' is not installed (no module {err.name!r}): {INSTALL_HINT}") from None
    return starlette


def page_html() -> str:
    return resources.files("scd_msc.play").joinpath("page.html").read_text(encoding="utf-8")


def make_app(game: Game) -> Any:
    """The Starlette app serving ``game``; the recording is closed on shutdown."""
    import_web()
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scd-msc-play")
    busy = asyncio.Lock()

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    async def send_frames(ws: WebSocket, frames: list) -> None:
        for frame in frames:
            await ws.send_text(json.dumps(frame.meta()))
            await ws.send_bytes(frame.png())

    async def handle(ws: WebSocket, message: dict) -> None:
        kind = message.get("type")
        if kind == "reset":
            await send_frames(ws, await run(game.reset, message.get("start", "clip")))
            await ws.send_text(json.dumps({"type": "ready"}))
        elif kind == "step":
            await send_frames(ws, [await run(game.step, message.get("action"))])
        else:
            raise ValueError(f"type={kind!r}: expected reset or step")

    async def homepage(request: Any) -> HTMLResponse:
        return HTMLResponse(page_html())

    async def play(ws: WebSocket) -> None:
        await ws.accept()
        if busy.locked():
            await ws.send_text(json.dumps({"type": "error", "message": "another page is playing; close it first"}))
            await ws.close(code=1013)
            return
        async with busy:
            await ws.send_text(json.dumps(game.info()))
            try:
                while True:
                    try:
                        message = json.loads(await ws.receive_text())
                        if not isinstance(message, dict):
                            raise ValueError(f"message={message!r}: expected a JSON object")
                        await handle(ws, message)
                    except ValueError as err:  # a bad request: say so, keep playing
                        await ws.send_text(json.dumps({"type": "error", "message": str(err)}))
            except WebSocketDisconnect:
                pass

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:  # shutdown: finish the recording on the thread that wrote it
            path = await run(game.close)
            worker.shutdown()
            if path is not None:
                print(f"wrote {path}", flush=True)

    return Starlette(routes=[Route("/", homepage), WebSocketRoute("/ws", play)], lifespan=lifespan)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one); ValueError naming
    ``--port`` when it is taken, or ``--host`` when the address is not this machine's."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise ValueError(f"--host={host!r}: expected an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # each frame is two writes (its JSON, then its PNG): with Nagle's algorithm the second waits for the
    # page's delayed ACK, ~40 ms per frame on Linux. The accepted connections inherit the option.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"--host={host!r}: expected an address of this machine ({err.strerror})") from None
        raise ValueError(f"--port={port}: expected a free port on {host} ({err.strerror})") from None
    sock.listen(16)
    return sock


def serve(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM, the normal way to stop: uvicorn
    shuts down cleanly (the recording is closed), then re-raises the signal, which ends
    here."""
    import_web()
    import uvicorn

    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
