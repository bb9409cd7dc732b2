"""A RabbitMQ node of the test's own, for the consumer-timeout test.

The consumer timeout is a broker setting. RabbitMQ 3.12+ can set it per queue (the
``x-consumer-timeout`` queue argument, or a ``consumer-timeout`` policy), which a test
could scope to its own queue; the RabbitMQ here is 3.10 (Debian), where it is one global
``consumer_timeout`` read when a channel opens. Lowering it on the shared broker would
change it for everyone, so the test starts a throwaway node from the same installation:
its own node name, ports, data directory and config (``consumer_timeout`` of a few
seconds, a fast channel tick so that the timeout is noticed promptly), loopback only,
no plugins. It takes about 5 s to start and is stopped and deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SERVER = Path(os.environ.get("TASKGATE_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server"))
CTL = SERVER.with_name("rabbitmqctl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateBroker:
    def __init__(self, consumer_timeout_ms: int) -> None:
        self.consumer_timeout_ms = consumer_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="taskgate-py-rabbit-"))
        self.port = _free_port()
        self.dist_port = _free_port()
        self.node = f"taskgate-pytest-{secrets.token_hex(4)}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def env(self) -> dict[str, str]:
        d = self.dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "TASKGATE_"))}
        env.update(
            HOME=str(d),  # its own Erlang cookie
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout: float = 90.0) -> None:
        if not SERVER.exists():
            raise RuntimeError(f"RabbitMQ is not installed at {SERVER} (scripts/ensure-deps installs it)")
        d = self.dir
        (d / "rabbitmq-env.conf").write_text("")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"consumer_timeout = {self.consumer_timeout_ms}\n"
            "loopback_users.guest = true\n"
        )
        # The channel checks its consumer timeout on each tick (default: every 60 s).
        (d / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 500}]}].\n")
        (d / "enabled_plugins").write_text("[].\n")
        log = open(d / "server.out", "wb")
        self.process = subprocess.Popen(
            [str(SERVER)], env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (d / "server.out").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"the private RabbitMQ node did not start:\n{output}")
            time.sleep(0.2)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            # Its own process group (start_new_session): the launcher script and the VM.
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
