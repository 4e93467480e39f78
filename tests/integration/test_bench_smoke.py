"""A tiny run of bench/run.py, so the benchmark keeps working (its figures are not asserted:
timings belong in the README, not in test assertions)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def smoke(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """``bench/<script> --smoke``, which must exit 0: its output and its JSON figures."""
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("run.py", tmp_path)
    assert result["cores"] >= 1 and result["smoke"] is True
    assert result["overhead"]["io"]["all_passed"] and result["overhead"]["cpu"]["all_passed"]
    assert all(row["all_passed"] for row in result["scaling"]["by_parallelism"].values())
    assert set(result["latency"]) == {"polling", "instant"}
    assert result["scale"]["burst_queued"] == result["scale"]["burst_commits"]
    assert result["environments"]["cold_build_s"]["small"] > 0 and result["environments"]["src_s"] > 0
    assert "| figure | measured | goal |" in proc.stdout


def test_warm_pool_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("warm.py", tmp_path)
    assert result["host_floor_s"] > 0 and all(row["all_passed"] for row in result["by_parallelism"].values())
    assert "| parallelism | one warm job |" in proc.stdout


def test_bisection_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("bisect.py", tmp_path)  # 0 only when the right commit was named
    assert result["coalesced"]["culprit"] == result["bad"] and result["every_commit"]["jobs"] == result["commits"]
    assert "| jobs spent |" in proc.stdout


def test_history_benchmark_smoke_run(tmp_path: Path) -> None:
    proc, result = smoke("history.py", tmp_path)
    assert result["cases_recorded"] == result["jobs"] * result["cases_per_job"]
    assert "| `GET /api/jobs`, a page of 50 |" in proc.stdout


def test_shards_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("shards.py", tmp_path)  # 0 only when every run passed and the shards ran every test
    cases = result["cases"]
    assert list(cases) == ["as recorded", "slower, fixed split", "slower, queue", "no history, queue"]
    assert all(len(case["shards"]) == 4 and case["tests_run"] == result["tests"] for case in cases.values())
    assert result["slower"]["tests"] > 0  # its ratios belong in the README: a 2 s suite's are noise
    assert "| slower, queue |" in proc.stdout


def test_limit_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("limit.py", tmp_path)
    assert result["all_passed"] and result["host_floor_s"] > 0 and result["p1_s"] > 0 and result["p4_s"] > 0
    assert set(result["phases_s"]) == {"1", "4"} and result["phases_s"]["1"]["run_s"] > 0
    assert "| parallelism 1, our time / host floor |" in proc.stdout


def test_merge_queue_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("merge_queue.py", tmp_path)  # 0 only when every passing request merged
    cases = result["cases"]
    assert list(cases) == ["speculative, all passing", "one at a time, all passing", "speculative, the 3rd failing"]
    assert cases["speculative, the 3rd failing"]["rejected"] == 1
    assert result["to_target_p50_s"] is not None and "| speculative, all passing |" in proc.stdout


def test_search_benchmark_smoke_run(tmp_path: Path) -> None:
    proc, result = smoke("search.py", tmp_path)
    assert result["jobs"] == 200 and result["queries"]["a rare message (one job)"]["hits"] >= 1
    assert result["queries"]["a word in every log"]["hits"] == 50  # the newest 50: a page, never every match
    assert "| `GET /api/search`" in proc.stdout


def test_postgres_benchmark_smoke_run(tmp_path: Path, runner_image: str) -> None:
    proc, result = smoke("postgres.py", tmp_path)
    assert result["overhead"]["over_floor"]["postgres"] > 0 and result["takeover"]["runs"] == 1
    assert len(result["overhead"]["orchestrator_s"]["sqlite"]) == 1 and "| per-job overhead" in proc.stdout
    assert result["api"]["jobs"] == 200 and "| take-over:" in proc.stdout
