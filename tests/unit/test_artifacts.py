"""Collecting a suite's artifacts from a workspace the code under test wrote: links refused,
sizes capped, globs; and the coverage read from a Cobertura report."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

from orchestrator.results import artifacts


def test_links_are_refused_and_sizes_capped(tmp_path: Path, monkeypatch) -> None:
    ws, target = tmp_path / "ws", tmp_path / "out"
    (ws / ".ci-artifacts" / "sub").mkdir(parents=True)
    (ws / ".ci-artifacts" / "report.html").write_text("<h1>ok</h1>")
    (ws / ".ci-artifacts" / "sub" / "data.bin").write_bytes(b"\0" * 100)
    (ws / ".ci-artifacts" / "secret").symlink_to("/etc/passwd")
    (ws / ".ci-artifacts" / "folder").symlink_to("/etc")  # a linked folder: never entered
    os.mkfifo(ws / ".ci-artifacts" / "pipe")
    (ws / ".ci-artifacts" / "big").write_bytes(b"x" * 2048)
    (ws / "build").mkdir()
    (ws / "build" / "wheel.whl").write_bytes(b"PK")
    (ws / "other.txt").write_text("not asked for")
    monkeypatch.setattr(artifacts, "MAX_FILE", 1024)
    found = artifacts.collect(ws, target, ["build/*.whl"])
    assert sorted(found.files) == ["build/wheel.whl", "report.html", "sub/data.bin"]
    assert (target / "report.html").read_text() == "<h1>ok</h1>" and not (target / "secret").exists()
    refused = "\n".join(found.refused)
    assert ".ci-artifacts/secret: not a regular file" in refused and ".ci-artifacts/pipe: not a regular file" in refused
    assert ".ci-artifacts/folder: not a regular file" in refused and ".ci-artifacts/big: 2048 bytes" in refused
    assert not any("passwd" in p.name for p in target.rglob("*"))


def test_the_job_cap(tmp_path: Path, monkeypatch) -> None:
    ws = tmp_path / "ws"
    (ws / ".ci-artifacts").mkdir(parents=True)
    for i in range(5):
        (ws / ".ci-artifacts" / f"f{i}").write_bytes(b"y" * 400)
    monkeypatch.setattr(artifacts, "MAX_JOB", 1000)
    found = artifacts.collect(ws, tmp_path / "out", [])
    assert found.files == ["f0", "f1"] and found.bytes == 800 and len(found.refused) == 3


def test_coverage_from_a_cobertura_report(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    assert artifacts.coverage(ws, tmp_path / "none") is None
    (ws / "coverage.xml").write_text('<?xml version="1.0"?><coverage line-rate="0.8342" branch-rate="0"></coverage>')
    assert artifacts.coverage(ws, tmp_path / "none") == 83.42
    (ws / "coverage.xml").unlink()
    (ws / "coverage.xml").symlink_to("/etc/passwd")
    assert artifacts.coverage(ws, tmp_path / "none") is None


def _cobertura(hits: dict[str, list[int]]) -> str:
    """A report listing, per file, its lines and whether each ran (1) or not (0)."""
    classes = "".join(
        f'<class name="{name}" filename="{name}"><lines>'
        + "".join(f'<line number="{n}" hits="{h}"/>' for n, h in enumerate(ran, start=1))
        + "</lines></class>"
        for name, ran in hits.items()
    )
    return (
        f'<?xml version="1.0"?><coverage line-rate="0.1"><packages><package><classes>{classes}'
        "</classes></package></packages></coverage>"
    )


def test_the_coverage_of_a_split_suite_counts_a_line_run_by_any_shard(tmp_path: Path) -> None:
    shards = []
    for k, hits in enumerate([{"a.py": [1, 1, 0, 0]}, {"a.py": [0, 0, 1, 0], "b.py": [1, 0]}, {}], start=1):
        workspace, staged = tmp_path / f"ws{k}", tmp_path / f"staged{k}"
        workspace.mkdir()
        staged.mkdir()
        if hits:
            (workspace / "coverage.xml").write_text(_cobertura(hits))
        shards.append((workspace, staged))
    assert artifacts.coverage_of_shards(shards) == round(100 * 4 / 6, 2)  # a.py 3 of 4, b.py 1 of 2
    (tmp_path / "ws3" / "coverage.xml").symlink_to(tmp_path / "ws1" / "coverage.xml")  # never followed
    assert artifacts.coverage_of_shards(shards[2:]) is None


def test_a_folder_of_a_hundred_thousand_files_is_capped_and_counted(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".ci-artifacts").mkdir(parents=True)
    for i in range(100_000):
        (ws / ".ci-artifacts" / f"f{i:06d}").touch()
    (ws / ".ci-artifacts" / "link").symlink_to("/etc/passwd")
    found = artifacts.collect(ws, tmp_path / "out", [])
    document = found.document()
    assert len(document["files"]) == artifacts.MAX_FILES
    assert len(document["refused"]) <= artifacts.MAX_REFUSED and document["stopped"] is True
    assert len(json.dumps(document)) < 100_000  # not the 7.7 MB record of 99,000 refusals


def test_a_name_that_is_not_utf8_is_refused_and_listed_escaped(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".ci-artifacts").mkdir(parents=True)
    (ws / ".ci-artifacts" / "ok.txt").write_text("fine")
    with open(os.fsencode(ws / ".ci-artifacts") + b"/bad-\xff\xfe.txt", "wb") as fh:
        fh.write(b"x")
    found = artifacts.collect(ws, tmp_path / "out", [])
    assert found.files == ["ok.txt"] and found.refused == [r".ci-artifacts/bad-\xff\xfe.txt: the name is not UTF-8"]
    json.dumps(found.document(), ensure_ascii=False).encode("utf-8")  # what result.json is written as


def test_a_huge_coverage_report_is_read_as_a_stream(tmp_path: Path) -> None:
    """49 MB of tiny elements took the dispatcher to 1.1 GB when parsed whole."""
    ws = tmp_path / "ws"
    ws.mkdir()
    line = b'<line number="1" hits="1"/>'
    with open(ws / "coverage.xml", "wb") as fh:
        fh.write(b'<coverage line-rate="0.5"><packages><package><classes><class filename="a.py"><lines>')
        for _ in range(48 * 1024 * 1024 // len(line)):
            fh.write(line)
        fh.write(b"</lines></class></classes></package></packages></coverage>")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert artifacts.coverage(ws, tmp_path / "none") == 50.0
    assert artifacts.coverage_of_shards([(ws, tmp_path / "none")]) == 100.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 100, f"{grown_mb:.0f} MB more at the peak"
