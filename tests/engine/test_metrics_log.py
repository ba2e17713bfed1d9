"""metrics.jsonl: appended lines, a resume's rewrite cut back to its checkpoint."""

from __future__ import annotations

import errno
import json

import pytest
from _engine_toys import file_size_limit

from deformconv.engine import MetricsLogger, read_metrics


def _log(folder, iterations: range) -> str:
    logger = MetricsLogger(folder)
    for i in iterations:
        logger.log({"split": "train", "iter": i, "loss": 1.0 / i})
    logger.close()
    return (folder / "metrics.jsonl").read_text()


def test_a_resume_cuts_the_log_back_to_its_iteration_at_its_first_record(tmp_path):
    written = _log(tmp_path, range(1, 7))
    logger = MetricsLogger(tmp_path, resume_at=4)
    assert (tmp_path / "metrics.jsonl").read_text() == written  # a run failing now keeps it
    logger.log({"split": "train", "iter": 5, "loss": 0.5})
    logger.close()
    assert [r["iter"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_rewrite_that_fails_leaves_the_whole_log(tmp_path):
    """On a full disk the rewrite used to truncate the file first: 7 of 10 lines were left,
    the last one torn, and the history after them lost for good."""
    written = _log(tmp_path, range(1, 11))
    logger = MetricsLogger(tmp_path, resume_at=8)
    with file_size_limit(100), pytest.raises(OSError) as failed:
        logger.log({"split": "train", "iter": 9, "loss": 0.5})
    assert failed.value.errno == errno.EFBIG
    assert (tmp_path / "metrics.jsonl").read_text() == written
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file


def test_lines_that_are_no_records_are_skipped_like_a_torn_one(tmp_path):
    """A line of valid JSON other than an object (``null``) crashed a resume with
    AttributeError: 'NoneType' object has no attribute 'get', after config.json had been
    rewritten; one whose "iter" is no integer with a TypeError."""
    path = tmp_path / "metrics.jsonl"
    _log(tmp_path, range(1, 4))
    with path.open("a") as f:
        f.write('null\n[1, 2]\n"text"\n{"iter": "x"}\n{"iter": true}\n'
                '{"split": "train", "iter": 4, "lo')
    assert [r["iter"] for r in read_metrics(path)] == [1, 2, 3]
    logger = MetricsLogger(tmp_path, resume_at=2)
    logger.log({"split": "train", "iter": 3, "loss": 0.5})
    assert [json.loads(line)["iter"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_new_log_writes_nothing_before_its_first_record(tmp_path):
    """It created the file (and folder) when opened: a run failing in its first step left
    an empty metrics.jsonl, which kept its new folder from being removed; it emptied an
    earlier run's file at once, which a run failing in its first step then had lost."""
    MetricsLogger(tmp_path / "new", tensorboard=True).close()
    assert not (tmp_path / "new").exists()
    _log(tmp_path / "new", range(1, 3))
    assert [r["iter"] for r in read_metrics(tmp_path / "new" / "metrics.jsonl")] == [1, 2]
    earlier = (tmp_path / "new" / "metrics.jsonl").read_text()
    logger = MetricsLogger(tmp_path / "new")
    assert (tmp_path / "new" / "metrics.jsonl").read_text() == earlier
    logger.log({"split": "train", "iter": 1, "loss": 0.5})
    assert [r["iter"] for r in read_metrics(tmp_path / "new" / "metrics.jsonl")] == [1]
