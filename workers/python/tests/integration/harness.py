"""The integration harness: the real host binary, the real RabbitMQ, the Python worker as a
process (``python -m taskgate_worker``), and a Socket.IO client that speaks to the host as
a browser would.

Every test gets queue names of its own (``pyint.<run id>.<type>``, through a plugins.toml
written for it), a host on a port the host picks itself, worker connections named after
the run, and clean-up of processes and queues whatever happens. RabbitMQ is shared with
other runs: nothing here touches a queue it did not create.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aio_pika
import aiohttp
import socketio

PYTHON_DIR = Path(__file__).resolve().parents[2]
REPO_ROOT = PYTHON_DIR.parents[1]
AMQP_URL = os.environ.get("TASKGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
HOST_BIN = Path(os.environ.get("TASKGATE_BIN", REPO_ROOT / "target/debug/taskgate"))
PLUGINS_DIR = Path(os.environ.get("TASKGATE_PLUGINS_DIR", REPO_ROOT / "build/plugins"))

PLUGIN_TYPES = {"echo": "echo", "wordcount": "text.wordcount", "countdown": "demo.countdown"}


async def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------
# Child processes


class Proc:
    """A child process whose output lines are kept, for waiting on them and for dumps."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read(stream))
            for stream in (process.stdout, process.stderr)
            if stream is not None
        ]

    @classmethod
    async def start(cls, name: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
        process = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(name, process)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while True:
            line = await stream.readline()
            if not line:
                break
            self.lines.append(line.decode("utf-8", errors="replace").rstrip("\n"))
            self._changed.set()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    async def wait_for_line(self, pattern: str, timeout: float = 30.0, count: int = 1) -> re.Match[str]:
        """The ``count``-th line matching ``pattern`` (already printed or to come)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in map(regex.search, self.lines) if m]
            if len(found) >= count:
                return found[count - 1]
            if not self.alive and all(r.done() for r in self._readers):
                raise AssertionError(f"{self.name} exited ({self.process.returncode}) before printing {pattern!r}\n{self.tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no line matching {pattern!r} within {timeout} s\n{self.tail()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    def tail(self, n: int = 60) -> str:
        return "\n".join(f"    | {line}" for line in self.lines[-n:])

    async def wait(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout=timeout)
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await self.wait(grace)
        except asyncio.TimeoutError:
            self.kill()
            return await self.wait(10)

    def kill(self) -> None:
        if self.alive:
            self.process.kill()


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without TASKGATE_* settings that would override the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGATE_")}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# The host and its Socket.IO clients


@dataclass
class Host:
    url: str
    queues: dict[str, str]
    proc: Proc


@dataclass
class Exchange:
    """One request as the client saw it."""

    ack: Any = None
    responses: list[dict[str, Any]] = field(default_factory=list)
    final: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def chunks(self) -> list[Any]:
        return [r["data"] for r in self.responses if r["type"] == "chunk"]

    @property
    def last(self) -> dict[str, Any]:
        return self.responses[-1]


class Client:
    """A Socket.IO client of the host that checks the protocol's client-side rules on
    every response it sees (§1: chunk seq 0, 1, 2 …, nothing after the final response)."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.exchanges: dict[str, Exchange] = {}
        self.violations: list[str] = []
        self.sio.on("response", self._on_response)

    async def _on_response(self, data: dict[str, Any]) -> None:
        exchange = self.exchanges.get(data.get("id", ""))
        if exchange is None:
            self.violations.append(f"response for an unknown id: {data}")
            return
        if exchange.final.is_set():
            self.violations.append(f"response after the final one: {data}")
        if data["type"] == "chunk" and data.get("seq") != len(exchange.chunks):
            self.violations.append(f"chunk seq {data.get('seq')} after {len(exchange.chunks)} chunks")
        exchange.responses.append(data)
        if data["type"] in ("result", "error"):
            exchange.final.set()

    async def connect(self, url: str) -> None:
        await self.sio.connect(url, transports=["websocket"], wait_timeout=20)

    async def request(
        self, request_type: str, payload: Any, request_id: str | None = None, traceparent: str | None = None
    ) -> tuple[str, Exchange]:
        """Sends a request and waits for its ack (which must be positive)."""
        request_id = request_id or f"r-{secrets.token_hex(4)}"
        exchange = self.exchanges[request_id] = Exchange()
        envelope: dict[str, Any] = {"id": request_id, "requestType": request_type, "payload": payload}
        if traceparent is not None:
            envelope["traceparent"] = traceparent
        exchange.ack = await self.sio.call("request", envelope, timeout=30)
        assert exchange.ack == {"ok": True}, exchange.ack
        return request_id, exchange

    async def final(self, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
        exchange = self.exchanges[request_id]
        await asyncio.wait_for(exchange.final.wait(), timeout)
        return exchange.last

    async def cancel(self, request_id: str) -> None:
        await self.sio.emit("cancel", {"id": request_id})

    async def close(self) -> None:
        await self.sio.disconnect()


# ---------------------------------------------------------------------------------------
# The test context


class Run:
    """Everything one test starts, stopped and deleted at the end."""

    def __init__(self, amqp_url: str = AMQP_URL) -> None:
        self.id = secrets.token_hex(4)
        self.amqp_url = amqp_url
        self.procs: list[Proc] = []
        self.clients: list[Client] = []
        self.queues: set[str] = set()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"taskgate-py-{self.id}-"))
        self._workers = 0

    def queue_for(self, request_type: str) -> str:
        return f"pyint.{self.id}.{request_type}"

    @property
    def dead_letter_queue(self) -> str:
        """The run's own dead-letter queue (``[host] dead_letter_queue``; also its exchange's
        name, and ``<name>.inbox`` the hosts' inbox), so that no run sees another's dead
        letters. Deleted at the end."""
        return f"pyint.{self.id}.dead-letters"

    async def start_host(self, plugins: dict[str, dict[str, Any]] | None = None) -> Host:
        """A host on a free port serving the example plugins on this run's queues;
        ``plugins`` adds keys to a plugin's table (``timeout_ms``, ``queue_arguments`` …)."""
        if not HOST_BIN.exists():
            raise AssertionError(f"the host binary is missing at {HOST_BIN}: cargo build --workspace --bins")
        lines = ["[host]", 'listen = "127.0.0.1:0"', f"amqp_url = {json.dumps(self.amqp_url)}",
                 f"plugins_dir = {json.dumps(str(PLUGINS_DIR))}",
                 f"dead_letter_queue = {json.dumps(self.dead_letter_queue)}"]
        self.queues.update({self.dead_letter_queue, f"{self.dead_letter_queue}.inbox"})
        queues: dict[str, str] = {}
        for plugin, request_type in PLUGIN_TYPES.items():
            settings: dict[str, Any] = {"enabled": True, "queue": self.queue_for(request_type)}
            settings.update((plugins or {}).get(plugin, {}))
            lines.append(f"\n[plugins.{plugin}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in settings.items())
            queues[request_type] = settings["queue"]
        self.queues.update(queues.values())
        config = self.tmp / "plugins.toml"
        config.write_text("\n".join(lines) + "\n")
        proc = await Proc.start(
            "host", [str(HOST_BIN), "--config", str(config)],
            child_env(TASKGATE_LOG="info,taskgate_host=debug,lapin=warn", NO_COLOR="1"),
        )
        self.procs.append(proc)
        match = await proc.wait_for_line(r"listening on (\S+)", timeout=30)
        url = f"http://{match.group(1)}"

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 30, "the host's /readyz to answer 200", interval=0.1)
        return Host(url, queues, proc)

    async def start_worker(
        self,
        target: str,
        queues: dict[str, str],
        *args: str,
        amqp_url: str | None = None,
        wait_ready: bool = True,
        name: str | None = None,
    ) -> Proc:
        """``python -m taskgate_worker TARGET`` on ``queues`` (request type → queue)."""
        self._workers += 1
        name = name or f"worker{self._workers}"
        argv = [sys.executable, "-m", "taskgate_worker", target, "--log-level", "DEBUG",
                "--connection-name", f"pyint-{self.id}-{name}"]
        for request_type, queue in queues.items():
            argv += ["--queue", f"{request_type}={queue}"]
        argv += list(args)
        proc = await Proc.start(
            name, argv, child_env(TASKGATE_AMQP_URL=amqp_url or self.amqp_url, PYTHONUNBUFFERED="1"), cwd=PYTHON_DIR
        )
        self.procs.append(proc)
        if wait_ready:
            await proc.wait_for_line(r"worker ready", timeout=60)
        return proc

    async def client(self, host: Host) -> Client:
        client = Client()
        await client.connect(host.url)
        self.clients.append(client)
        return client

    async def amqp(self, url: str | None = None) -> aio_pika.abc.AbstractConnection:
        return await aio_pika.connect(url or self.amqp_url, timeout=20)

    async def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not the ones delivered and unacked)."""
        connection = await self.amqp()
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await connection.close()

    def dump(self) -> str:
        parts = [f"==== run {self.id} ===="]
        for proc in self.procs:
            parts.append(f"---- {proc.name} (exit {proc.process.returncode}; {len(proc.lines)} lines) ----")
            parts.extend(proc.lines[-200:])
        for client in self.clients:
            for request_id, exchange in client.exchanges.items():
                parts.append(f"client {request_id}: ack {exchange.ack} responses {exchange.responses[-20:]}")
        return "\n".join(parts)

    async def cleanup(self) -> None:
        for client in self.clients:
            await client.close()
        await asyncio.gather(*(proc.stop() for proc in self.procs), return_exceptions=True)
        if self.queues:
            try:
                connection = await self.amqp()
                for queue in self.queues:
                    channel = await connection.channel()
                    try:
                        await channel.queue_delete(queue)
                    except Exception:
                        pass
                channel = await connection.channel()
                try:
                    await channel.exchange_delete(self.dead_letter_queue)
                except Exception:
                    pass
                await connection.close()
            except Exception as error:  # the broker of a test may be gone already
                print(f"cleanup: queues not deleted: {error!r}", file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


# ---------------------------------------------------------------------------------------
# A TCP proxy between a worker and RabbitMQ, to cut its connection at will


class Proxy:
    """Forwards 127.0.0.1:<port> to the broker; :meth:`cut` drops every connection
    through it (the worker sees its broker connection fail)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[Any]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.pipes):
            task.cancel()

