"""The file-tailing source: audit events read from kube-apiserver's audit log (JSON lines,
``--audit-log-path``), for clusters that write audit logs to disk (``--usage-audit-log``).

Every second the new complete lines are read, parsed one by one (a malformed or oversized
line is skipped and counted: a log is not a batch, one bad line must not hold back the rest)
and counted by the :class:`~nhi.reconcilers.usage.UsageStore`. Where it stopped, the
checkpoint (the file's inode and offset), is persisted with the usage (the state ConfigMap),
so a restart goes on from there instead of counting the file again. Rotation (the API server
renames the file and starts a new one) is followed: the renamed file is read to its end
through the open handle, then the new one from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nhi import metrics_usage as metrics
from nhi.models.usage import AuditError, Mint, Observation, parse_one
from nhi.reconcilers.usage import UsageStore

log = logging.getLogger("nhi.usage.log")

#: Longest line read (an event at Metadata level is about 1-2 KB).
MAX_LINE = 256 * 1024
#: Most bytes read in one step (then the event loop gets a turn).
CHUNK = 4 * 1024 * 1024
POLL = 1.0


@dataclass(frozen=True)
class Checkpoint:
    inode: int
    offset: int

    def to_text(self) -> str:
        return json.dumps({"inode": self.inode, "offset": self.offset})

    @staticmethod
    def parse(text: str) -> Checkpoint | None:
        try:
            data = json.loads(text)
            return Checkpoint(int(data["inode"]), int(data["offset"]))
        except (ValueError, TypeError, KeyError):
            return None


def parse_lines(data: bytes) -> tuple[list[Observation], list[Mint], int]:
    """The events of complete lines: (observations, mints, lines skipped)."""
    observations, mints, skipped = [], [], 0
    for i, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        if len(line) > MAX_LINE:
            skipped += 1
            continue
        try:
            obs, mint = parse_one(json.loads(line), f"line {i}")
        except (ValueError, RecursionError):  # AuditError is a ValueError
            skipped += 1
            continue
        if obs is not None:
            observations.append(obs)
        if mint is not None:
            mints.append(mint)
    return observations, mints, skipped


class AuditLogTail:
    def __init__(self, path: str, store: UsageStore) -> None:
        self.path = path
        self.store = store
        self.file: IO[bytes] | None = None
        self.inode = 0
        self.offset = 0
        self.pending = b""
        self._task: asyncio.Task[None] | None = None

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the complete lines counted so far end."""
        return Checkpoint(self.inode, self.offset)

    def resume(self, checkpoint: Checkpoint | None) -> None:
        """Open the log, at the checkpoint when it is of this file and not past its end."""
        self.close()
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open across rotations
        except OSError as err:
            log.warning("cannot open the audit log yet", extra={"error": str(err)})
            return
        st = os.fstat(f.fileno())
        start = 0
        if checkpoint and checkpoint.inode == st.st_ino and checkpoint.offset <= st.st_size:
            start = checkpoint.offset
        f.seek(start)
        self.file, self.inode, self.offset, self.pending = f, st.st_ino, start, b""

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def read(self) -> int:
        """Count what was appended since the last read; returns the events counted."""
        if self.file is None:
            self.resume(None)
            if self.file is None:
                return 0
        counted = self._drain()
        with contextlib.suppress(OSError):
            if Path(self.path).stat().st_ino != self.inode:  # rotated: the old one is read out
                counted += self._drain()
                self.resume(None)
                counted += self._drain()
        return counted

    def _drain(self) -> int:
        assert self.file is not None
        counted = 0
        # self.offset is where self.pending (read, not yet a complete line) starts.
        while chunk := self.file.read(CHUNK):
            data = self.pending + chunk
            end = data.rfind(b"\n") + 1
            observations, mints, skipped = parse_lines(data[:end])
            counted += self.store.ingest(observations, mints)[0]
            self.offset += end
            self.pending = data[end:]
            if len(self.pending) > MAX_LINE:  # a line without end: skipped
                self.offset += len(self.pending)
                self.pending = b""
                skipped += 1
            metrics.usage_log_lines_skipped.inc(skipped)
        return counted

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nhi-usage-log")

    async def _run(self) -> None:
        while True:
            try:
                if self.store.is_active() and self.store.loaded:
                    if self.file is None:
                        self.resume(Checkpoint.parse(self.store.log_checkpoint))
                    self.read()
                    self.store.log_checkpoint = self.checkpoint.to_text()
                elif self.file is not None:  # a standby: read again from the checkpoint later
                    self.close()
            except asyncio.CancelledError:
                raise
            except (OSError, AuditError) as err:
                log.error("could not read the audit log", extra={"error": str(err)})
            await asyncio.sleep(POLL)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.close()
