"""A bare trio-websocket server: sends every line of a file as one text frame.

``python -m bench.ws_ceiling_server FRAMES_FILE PORT``; prints ``READY`` when
listening. Each connection gets all the frames, then stays open until the
client closes: the replay ceiling for the websocket half of the service.
"""

from __future__ import annotations

import sys
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def handler(frames: list[str], request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        for frame in frames:
            await ws.send_message(frame)
        while True:
            await ws.get_message()
    except ConnectionClosed:
        pass


async def main(path: str, port: int) -> None:
    with open(path, encoding="utf-8") as f:
        frames = f.read().splitlines()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve_websocket, partial(handler, frames), "127.0.0.1", port, ssl_context=None)
        )
        print("READY", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
