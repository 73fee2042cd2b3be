"""A loopback TCP proxy for tests and benchmarks: adds latency, counts bytes, and can
"freeze" the connections it holds (traffic silently stops, sockets stay open), which is
what a NAT timeout or a dead Wi-Fi does to an idle IMAP connection; "close" them (the
socket closes with no goodbye, as Cyrus does on shutdown); reset them (RST, what a
restarting middlebox or a server crash does); and rewrite what the server says (to play
a server that throttles, or lacks a capability). It can cut the network off (`partition`:
every packet of every connection, open or new, is dropped, until `heal`, after which new
connections work and those it cut stay dead, their replies lost). It can also lose one reply: the next
server-to-client chunk holding a marker is discarded and the connection dropped, as when
a network fails after the server has acted on a command."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable

from email_ingestion.sandbox.dovecot import free_port


class TcpProxy:
    def __init__(self, target_port: int, delay_s: float = 0.0, listen_port: int = 0,
                 rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        # Applied to each chunk the server sends; loopback IMAP answers arrive whole.
        self.rewrite = rewrite
        self.port = listen_port or free_port()
        self.bytes_to_client = 0
        self.bytes_to_server = 0
        self.connections = 0
        self._frozen: set[int] = set()  # ids of connections whose traffic is dropped
        self._live: set[int] = set()
        self._writers: dict[int, list[asyncio.StreamWriter]] = {}
        self.last_from_client = b""  # the last chunk a client sent (tests wait for a command)
        self._drop_marker: bytes | None = None
        self.partitioned = False
        self.replies_dropped = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def freeze_existing(self) -> None:
        """Silently drop all traffic on the connections open now; new ones work."""
        self._frozen |= set(self._live)

    def partition(self) -> None:
        """Drop all traffic, on the connections open now and on any opened until heal()."""
        self.partitioned = True
        self._frozen |= set(self._live)

    def heal(self) -> None:
        """New connections work again; those cut off by the partition stay frozen."""
        self.partitioned = False

    def close_existing(self) -> int:
        """Close the connections open now on both sides, without a word; new ones work.
        Returns how many were closed."""
        return asyncio.run_coroutine_threadsafe(self._close_existing(), self._loop).result(5)

    async def _close_existing(self) -> int:
        closing = list(self._writers.values())
        for writers in closing:
            for writer in writers:
                writer.close()
        return len(closing)

    def reset_existing(self) -> None:
        """Abort the connections open now with a TCP reset, both sides; new ones work."""
        asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(5)

    async def _reset(self) -> None:
        for writers in list(self._writers.values()):
            for writer in writers:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # Linger 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()

    def drop_next_reply(self, marker: bytes) -> None:
        """Lose the next reply (server-to-client chunk) that contains `marker`, then close
        that connection: the server did the work, the client never hears of it."""
        self._drop_marker = marker

    def _drops(self, data: bytes) -> bool:
        if self._drop_marker is None or self._drop_marker not in data:
            return False
        self._drop_marker = None
        self.replies_dropped += 1
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = id(writer)
        self.connections += 1
        self._live.add(conn_id)
        if self.partitioned:
            self._frozen.add(conn_id)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers[conn_id] = [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer, conn_id, True),
                             self._pipe(up_reader, writer, conn_id, False), return_exceptions=True)
        self._live.discard(conn_id)
        self._frozen.discard(conn_id)  # ids are reused: a later connection must not inherit the freeze
        self._writers.pop(conn_id, None)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    conn_id: int, upstream: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send_later(queue, writer, conn_id))
        try:
            while data := await reader.read(65536):
                if not upstream and self._drops(data):
                    writer.transport.abort()
                    break
                if upstream:
                    self.bytes_to_server += len(data)
                    self.last_from_client = data[-200:]
                else:
                    self.bytes_to_client += len(data)
                    data = self.rewrite(data) if self.rewrite else data
                await queue.put((time.monotonic() + self.delay_s, data))
        finally:
            await queue.put((0.0, b""))
            await sender

    async def _send_later(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter,
                          conn_id: int) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if conn_id in self._frozen:
                continue
            writer.write(data)
            await writer.drain()
        if conn_id not in self._frozen:
            writer.close()
