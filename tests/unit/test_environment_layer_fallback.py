"""An engine that cannot load a lone layer (the containerd image store wants every layer in
the archive) still gets its environment: the same files, put in place by a root container
and committed, with the image's replaced files removed first. On a recording stand-in for
the engine: the engine here loads layers (tests/integration/test_environments.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from docker.errors import APIError

from orchestrator.backends.base import ImageInfo
from orchestrator.environment.build import Environments
from orchestrator.environment.layer import Layer, Site
from orchestrator.environment.sandbox import Ended, Limits
from orchestrator.environment.settings import Settings


class RefusingApi:
    def __init__(self) -> None:
        self.loads = 0

    def inspect_image(self, image):
        return {"Config": {"User": "1000:1000"}, "RootFS": {"Layers": ["sha256:a"]}, "Architecture": "amd64"}

    def load_image(self, data):
        self.loads += 1
        raise APIError("500 Server Error", explanation="layer sha256:a not found in the archive")


class Engine:
    def __init__(self) -> None:
        self.api = RefusingApi()


class CopyingSandbox:
    labels = {"orchestrator.instance": "i"}

    def __init__(self) -> None:
        self.copied: list[tuple[bytes, str]] = []

    def copy(self, image, layer, removed, tag, labels, out):
        self.copied.append((layer.read_bytes(), removed.read_text()))
        return Ended(0, False, ""), "sha256:committed"


def test_an_engine_that_refuses_a_lone_layer_gets_it_copied_and_committed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("X = 2\n")
    (site / "pkg-2.0.dist-info").mkdir()
    purelib = "/usr/lib/python3/dist-packages"
    layer = Layer.plan(site, Site(purelib, "/usr/local/bin", {"pkg-1.0.dist-info": ("pkg/old.py",)}))
    engine = Engine()
    settings = Settings(None, (), 60, 1 << 20, Limits("256m", 1, 64), "1000:1000", "i")
    environments = Environments(tmp_path / "state", engine, settings)  # type: ignore[arg-type]
    sandbox = CopyingSandbox()
    for _ in range(2):
        got = environments._lay(
            sandbox,  # type: ignore[arg-type]
            ImageInfo("runner", "sha256:r"),
            layer,
            tmp_path,
            "orchestrator-env/x:1",
            {},
            io.StringIO(),
        )
        assert got == ImageInfo("orchestrator-env/x:1", "sha256:committed")
    assert engine.api.loads == 1  # refused once: the next build does not ask again
    tar, removed = sandbox.copied[0]
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
    assert f"{purelib.lstrip('/')}/pkg/__init__.py" in names and not [n for n in names if ".wh." in n]
    assert removed.split() == [f"{purelib}/pkg-1.0.dist-info", f"{purelib}/pkg/old.py"]
