"""Aggregator processes a test can kill -9: `python -m aggregator_worker` on its servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from telemetry_tools.servers import free_port
from telemetry_tools.verify import group_lag


class AggregatorProcess:
    """One worker process with its own port; restartable after a SIGKILL."""

    def __init__(self, service_env: dict[str, Any], group: str, log_dir: Path, **env: str):
        self.env = {
            **os.environ,
            **{name.upper(): str(value) for name, value in service_env.items()},
            "CONSUMER_GROUP": group,
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.env["PORT"] = str(free_port())
        with (self.log_dir / f"aggregator-{id(self)}-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aggregator_worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, no offset is committed, a write may be half done."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def assert_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            logs = sorted(self.log_dir.glob(f"aggregator-{id(self)}-*.log"))
            tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
            raise AssertionError(f"aggregator exited with {self.process.returncode}:\n{tail}")


async def wait_caught_up(
    bootstrap_servers: str,
    group: str,
    topic: str,
    processes: list[AggregatorProcess],
    timeout_s: float,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        for process in processes:
            process.assert_alive()
        if await group_lag(bootstrap_servers, group, topic) == 0:
            return
        await asyncio.sleep(1.0)
    raise AssertionError(f"group {group} still behind after {timeout_s}s")
