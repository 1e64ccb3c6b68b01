"""Worker processes a test can kill -9: `python -m <worker module>` on the test's servers."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import requests
from telemetry_tools.servers import free_port
from telemetry_tools.verify import group_lag


class WorkerProcess:
    """One worker process with its own port; restartable after a SIGKILL."""

    def __init__(
        self,
        service_env: dict[str, Any],
        group: str,
        log_dir: Path,
        module: str = "aggregator_worker",
        **env: str,
    ):
        self.module = module
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
        with (self.log_dir / f"{self.module}-{id(self)}-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
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

    def metric(self, name: str) -> float:
        """A counter or gauge without labels from the process's /metrics (0 if absent)."""
        body = requests.get(f"http://127.0.0.1:{self.env['PORT']}/metrics", timeout=5).text
        for line in body.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return 0.0

    def assert_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            logs = sorted(self.log_dir.glob(f"{self.module}-{id(self)}-*.log"))
            tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
            raise AssertionError(f"{self.module} exited with {self.process.returncode}:\n{tail}")


async def wait_caught_up(
    bootstrap_servers: str,
    group: str,
    topic: str,
    processes: list[WorkerProcess],
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


async def kill_at_random_moments(
    processes: list[WorkerProcess],
    progress: Callable[[], Awaitable[int]],
    kills: int,
    rnd: random.Random,
    max_delay_s: float,
) -> int:
    """SIGKILL a random process at a random moment while a batch is being written; restart it.

    Waiting for ``progress()`` (a count of documents the workers write) to move,
    then up to ``max_delay_s`` more, lands the kill anywhere in a batch's
    writes, including after them and before the commit, the case that replays
    records already written. Returns how many kills happened (fewer when the
    stream ran out first).
    """
    done = 0
    loop = asyncio.get_running_loop()
    while done < kills:
        victim = rnd.choice(processes)
        before = await progress()
        deadline = loop.time() + 120
        while await progress() == before:
            for process in processes:
                process.assert_alive()
            if loop.time() > deadline:
                return done  # the stream ran out before every kill: too few readings
            await asyncio.sleep(0.02)
        await asyncio.sleep(rnd.uniform(0.0, max_delay_s))
        victim.kill()
        done += 1
        await asyncio.sleep(rnd.uniform(0.0, 1.0))
        victim.start()
    return done
