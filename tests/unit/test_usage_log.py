"""The file-tailing source: complete lines only, bad lines skipped and counted, the
checkpoint resumed without counting again, rotation followed to the end of the old file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nhi import metrics
from nhi.reconcilers.usage_log import AuditLogTail, Checkpoint
from tests.unit.test_usage import event
from tests.unit.test_usage_store import FakeApi, store

pytestmark = pytest.mark.unit


def line(**kw: Any) -> bytes:
    return json.dumps(event(**kw)).encode() + b"\n"


def count(tail: AuditLogTail) -> int:
    book = tail.store.books.get(("team", "billing"))
    return sum(s.count for s in book.entries.values()) if book else 0


def skipped() -> float:
    return metrics.REGISTRY.get_sample_value("nhi_usage_log_lines_skipped_total") or 0


def test_lines_are_counted_once_and_bad_ones_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(line(auditID="1") + b"not json\n" + line(auditID="2")[:40])
    tail = AuditLogTail(str(log), store(FakeApi()))
    before = skipped()
    assert tail.read() == 1 and count(tail) == 1
    assert skipped() == before + 1
    with log.open("ab") as f:  # the rest of the half-written line, and one more
        f.write(line(auditID="2")[40:] + line(auditID="3"))
    assert tail.read() == 2 and count(tail) == 3
    assert tail.checkpoint.offset == log.stat().st_size


def test_a_restart_resumes_at_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(line(auditID="1") + line(auditID="2"))
    first = AuditLogTail(str(log), store(FakeApi()))
    first.read()
    saved = Checkpoint.parse(first.checkpoint.to_text())
    with log.open("ab") as f:
        f.write(line(auditID="3"))
    second = AuditLogTail(str(log), store(FakeApi()))  # a new process: no auditIDs remembered
    second.resume(saved)
    assert second.read() == 1
    # Another file at that path (an inode of its own): read from its start.
    other = tmp_path / "other.log"
    other.write_bytes(line(auditID="9"))
    other.replace(log)
    third = AuditLogTail(str(log), store(FakeApi()))
    third.resume(saved)
    assert third.read() == 1
    assert Checkpoint.parse("garbage") is None


def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(line(auditID="1"))
    tail = AuditLogTail(str(log), store(FakeApi()))
    assert tail.read() == 1
    with log.open("ab") as f:
        f.write(line(auditID="2"))  # written just before the rotation
    log.rename(tmp_path / "audit-2026-12-07T06-00-00.000.log")
    log.write_bytes(line(auditID="3"))
    assert tail.read() == 2 and count(tail) == 3
    assert tail.checkpoint.inode == log.stat().st_ino
