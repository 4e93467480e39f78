"""The layer that puts an unpack's packages into an image, written on the host from a
folder a container wrote: only folders and regular files, root's, with no special bits;
a distribution the image had is replaced whole (its old files whited out); nothing outside
the package and scripts folders is touched, whatever the image's RECORD says."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from orchestrator.environment.layer import BadSite, Layer, Site

PURELIB = "/usr/local/lib/python3.11/dist-packages"
SITE = Site(
    PURELIB,
    "/usr/local/bin",
    {
        "pkg-1.0.dist-info": (
            "pkg/__init__.py",
            "pkg/old.py",
            "pkg-1.0.dist-info/METADATA",
            "../../../bin/oldtool",
            "../../../../../etc/passwd",  # not a file of a package folder: never removed
        ),
        "other-2.0.dist-info": ("other/__init__.py",),
    },
)


def unpacked(folder: Path) -> Path:
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("X = 2\n")
    (folder / "pkg" / "data.txt").write_text("d")
    os.chmod(folder / "pkg" / "data.txt", 0o666)
    (folder / "pkg-2.0.dist-info").mkdir()
    (folder / "pkg-2.0.dist-info" / "METADATA").write_text("Name: pkg\n")
    (folder / "bin").mkdir()
    (folder / "bin" / "tool").write_text("#!/usr/bin/python3\n")
    os.chmod(folder / "bin" / "tool", 0o4777)  # setuid, world-writable
    os.symlink("/etc/shadow", folder / "pkg" / "link")
    os.mkfifo(folder / "pkg" / "fifo")
    (folder / "pkg" / ".wh..wh..opq").write_text("")  # would hide the image's folder
    return folder


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_layer_holds_plain_files_of_root_and_replaces_the_old_version_whole(tmp_path: Path) -> None:
    layer = Layer.plan(unpacked(tmp_path / "site"), SITE)
    out = io.BytesIO()
    digest = layer.write(out)
    assert digest == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
    got = members(out.getvalue())
    lib = PURELIB.lstrip("/")
    assert set(got) == {
        f"{lib}/pkg",
        f"{lib}/pkg/__init__.py",
        f"{lib}/pkg/data.txt",
        f"{lib}/pkg-2.0.dist-info",
        f"{lib}/pkg-2.0.dist-info/METADATA",
        "usr/local/bin/tool",
        # the old version: its folder of metadata whole, its files the new one has not
        f"{lib}/.wh.pkg-1.0.dist-info",
        f"{lib}/pkg/.wh.old.py",
        "usr/local/bin/.wh.oldtool",
    }
    assert all(m.uid == 0 and m.gid == 0 for m in got.values())
    assert got["usr/local/bin/tool"].mode == 0o755 and got[f"{lib}/pkg/data.txt"].mode == 0o644
    assert got[f"{lib}/pkg"].isdir() and got[f"{lib}/pkg/__init__.py"].isfile()
    assert sorted(layer.left_out) == ["pkg/.wh..wh..opq", "pkg/fifo", "pkg/link"]


def test_without_whiteouts_the_removed_paths_are_listed_for_the_caller(tmp_path: Path) -> None:
    layer = Layer.plan(unpacked(tmp_path / "site"), SITE)
    out = io.BytesIO()
    layer.write(out, whiteouts=False)
    assert not [name for name in members(out.getvalue()) if ".wh." in name]
    assert layer.removed == ("/usr/local/bin/oldtool", f"{PURELIB}/pkg-1.0.dist-info", f"{PURELIB}/pkg/old.py")


def test_a_distribution_the_unpack_did_not_install_is_left_alone(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "third-1.0.dist-info").mkdir(parents=True)
    assert Layer.plan(site, SITE).removed == ()


@pytest.mark.parametrize(
    "document",
    [
        {"purelib": "usr/lib", "scripts": "/usr/local/bin"},
        {"purelib": "/usr/lib/python3/dist-packages", "scripts": "/etc/cron.d"},
        {"purelib": "/opt/runner", "scripts": "/usr/local/bin"},
        {"purelib": "/usr/lib/../../etc", "scripts": "/usr/local/bin"},
        {"purelib": "/usr/lib", "scripts": "/usr/local/bin\n/etc"},
        {"purelib": "/usr/lib", "scripts": "/usr/local/bin", "present": {"a-1.dist-info": "pkg/x.py"}},
        {"scripts": "/usr/local/bin"},
    ],
)
def test_a_site_description_that_is_not_a_plain_one_is_refused(tmp_path: Path, document: dict) -> None:
    (tmp_path / "site.json").write_text(json.dumps(document))
    with pytest.raises(BadSite):
        Site.read(tmp_path / "site.json")
