"""The runner image's build context, made from the installed package's files (no engine)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from orchestrator.backends import runner_images


def members(folder: Path, interpreter: str) -> dict[str, bytes]:
    out = io.BytesIO()
    runner_images.context(folder, out, interpreter)
    with tarfile.open(fileobj=out) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_context_holds_what_the_dockerfile_copies_and_the_interpreter(tmp_path: Path) -> None:
    (tmp_path / "pytest-8.3.5-py3-none-any.whl").write_bytes(b"a wheel")
    found = members(tmp_path, "python3.15")
    dockerfile = found["Dockerfile.runner"].decode()
    assert "COPY runner_image/ /opt/runner/" in dockerfile and "/opt/runner/interpreter" in dockerfile
    for name in runner_images.IMAGE_FILES:
        assert found[f"runner_image/{name}"], name
    assert found["runner_image/interpreter"] == b"python3.15"
    assert found["runner_image/wheelhouse/pytest-8.3.5-py3-none-any.whl"] == b"a wheel"


def test_the_same_inputs_make_the_same_bytes_and_another_interpreter_others(tmp_path: Path) -> None:
    """Fixed times and owners: the builder's cache hits wherever the package is installed;
    each Python's image differs (one per interpreter, not one for all of a release)."""

    def context(interpreter: str) -> bytes:
        out = io.BytesIO()
        runner_images.context(tmp_path, out, interpreter)
        return out.getvalue()

    assert context("pypy3") == context("pypy3")
    assert context("pypy3") != context("python3")
