"""The ceiling: a bare websockets client that answers every request frame
with a canned 200, without verifying or parsing anything."""

from __future__ import annotations

import asyncio
import os
import sys

from websockets.asyncio.client import connect

BODY = '{\\"row\\":{\\"id\\":\\"t1\\"}}'


async def main(base_url: str) -> None:
    url = base_url.replace("http://", "ws://") + "/v1/source/listen"
    key = os.environ["ABLO_API_KEY"]
    async with connect(
        url, subprotocols=["ablo.source.v1", "ablo.bearer." + key], compression=None, max_size=None
    ) as ws:  # type: ignore[list-item]
        await ws.send('{"type":"register","protocolVersion":1}')
        await ws.recv()
        async for message in ws:
            text = message if isinstance(message, str) else message.decode()
            start = text.index('"id":"') + 6
            request_id = text[start : text.index('"', start)]
            await ws.send(
                '{"type":"response","id":"' + request_id + '","status":200,"body":"' + BODY + '"}'
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
