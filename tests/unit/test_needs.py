"""What a commit declares it needs, read from real files of a checkout (no code runs)."""

from pathlib import Path

import pytest

from orchestrator.environment.needs import BadDeclaration, detect


def checkout(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_dependency_groups_win_and_include_each_other(tmp_path: Path) -> None:
    src = checkout(
        tmp_path,
        {
            "pyproject.toml": """
[build-system]
requires = ["hatchling>=1.20"]
[project]
name = "p"
dependencies = ["attrs>=23"]
optional-dependencies = {test = ["never-used"]}
[dependency-groups]
lint = ["ruff"]
test = ["pytest>=9", {include-group = "coverage"}]
coverage = ["coverage[toml]"]
""",
            "requirements.txt": "never-read\n",
        },
    )
    needs = detect(src)
    assert needs.requirements == ("attrs>=23", "coverage[toml]", "hatchling>=1.20", "pytest>=9")
    assert needs.install_project and needs.sources[0] == "dependency-groups: test"


def test_test_extras_then_requirement_files(tmp_path: Path) -> None:
    src = checkout(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "p"\n'
            '[project.optional-dependencies]\ntest = ["pytest", "hypothesis"]\ndocs = ["sphinx"]\n'
        },
    )
    needs = detect(src)
    assert set(needs.requirements) == {"pytest", "hypothesis", "setuptools>=61", "wheel"}  # the default backend
    assert needs.extras == ("test",)
    files = checkout(
        tmp_path / "b",
        {
            "requirements/test.txt": "\ufeff-r ../requirements.txt\npytest  # the runner\n"
            "-c ../constraints.txt\n-e .\nhypothesis \\\n  >=6\n",
            "requirements.txt": "numpy>=1.26\n",
            "constraints.txt": "numpy<3\n",
        },
    )
    needs = detect(files)
    assert needs.requirements == ("hypothesis>=6", "numpy>=1.26", "pytest") and not needs.install_project
    assert needs.sources == ("requirements/test.txt",) and needs.constraints == ("numpy<3",)


def test_config_install_wins_over_detection(tmp_path: Path) -> None:
    src = checkout(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "p"\n[project.optional-dependencies]\n'
            'test = ["pytest"]\nextra = ["rich"]\n',
            "ci.txt": "requests\n",
        },
    )
    needs = detect(src, ["-e .[extra]", "-r ci.txt", "six"])
    assert set(needs.requirements) == {"requests", "rich", "six", "setuptools>=61", "wheel"}
    assert needs.sources[0] == "config: install"


def test_setup_cfg_is_read_as_text_and_setup_py_never_runs(tmp_path: Path) -> None:
    src = checkout(
        tmp_path,
        {
            "setup.py": "raise SystemExit('setup.py must not run on the host')\n",
            "setup.cfg": "[metadata]\nname = p\n[options]\ninstall_requires =\n    attrs>=23  # for classes\n"
            "    # a comment\n    importlib-metadata; python_version < '3.10'\n"
            "[options.extras_require]\ntesting = file: requirements/testing.txt\ndocs = sphinx\n",
            "requirements/testing.txt": "pytest>=8\n",
        },
    )
    needs = detect(src)
    assert set(needs.requirements) == {
        "attrs>=23",
        'importlib-metadata; python_version < "3.10"',
        "pytest>=8",
        "setuptools>=61",
        "wheel",
    }
    assert needs.sources == (
        "setup.cfg: extras_require: testing",
        "setup.cfg: install_requires",
        "build-system.requires",
    )
    both = checkout(
        tmp_path / "both",
        {
            "pyproject.toml": '[project]\nname = "p"\ndependencies = ["rich"]\n',
            "setup.cfg": "[options]\ninstall_requires = never-read\n",
        },
    )
    assert detect(both).requirements == ("rich", "setuptools>=61", "wheel")  # [project] wins, as in setuptools


def test_nothing_declared_is_no_environment(tmp_path: Path) -> None:
    assert detect(checkout(tmp_path, {"tests/test_a.py": "def test_a(): pass\n"})).empty


def test_the_fingerprint_follows_the_declarations_only(tmp_path: Path) -> None:
    a = detect(checkout(tmp_path / "a", {"requirements.txt": "pytest\nrich\n"}))
    b = detect(checkout(tmp_path / "b", {"requirements.txt": "rich\n\npytest\n", "other.py": "x = 1\n"}))
    c = detect(checkout(tmp_path / "c", {"requirements.txt": "rich\npytest>=9\n"}))
    assert a.fingerprint("3.11", "img") == b.fingerprint("3.11", "img") != c.fingerprint("3.11", "img")
    assert a.fingerprint("3.11", "img") != a.fingerprint("3.11", "another runner image")


@pytest.mark.parametrize(
    "files",
    [
        {"pyproject.toml": "[project\nname = 'broken'"},
        {"pyproject.toml": "[dependency-groups]\ntest = [{include-group = 'test'}]\n"},
        {"pyproject.toml": "[dependency-groups]\ntest = [42]\n"},
        {"pyproject.toml": "[project]\ndependencies = 'not a list'\n"},
        {"requirements.txt": "-r /etc/passwd\n"},
        {"requirements.txt": "-r missing.txt\n"},
        {"setup.cfg": "[options\ninstall_requires = x\n"},
        {"setup.cfg": "[options.extras_require]\ntest = file: ../../etc/passwd\n"},
    ],
)
def test_bad_declarations_are_one_clear_error(tmp_path: Path, files) -> None:
    with pytest.raises(BadDeclaration):
        detect(checkout(tmp_path, files))


def test_links_out_of_the_checkout_are_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.toml"
    secret.write_text("[project]\ndependencies = ['x']\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").symlink_to(secret)
    with pytest.raises(BadDeclaration, match="link out of the commit"):
        detect(src)


# Each class of what a commit may try to hand to pip through its declarations: refused,
# with the line that carried it (cut, escaped) and never a host file's contents.
HOSTILE_STRINGS = [
    "probe @ http://127.0.0.1:9/probe-1.0.tar.gz",  # a direct reference: pip builds it to read its metadata
    "probe @ file:///tmp/probe",
    "wheel @ https://example.invalid/w-1.0-py3-none-any.whl",
    "http://127.0.0.1:9/probe-1.0.tar.gz",  # a bare URL
    "/some/dir",
    "./vendor/pkg",
    "../elsewhere",  # paths
    "probe-1.0.tar.gz",
    "probe-1.0-py3-none-any.whl",  # a file by its name
    "-e git+file:///tmp/repo#egg=probe",  # an editable VCS checkout
    "--extra-index-url http://127.0.0.1:9/simple",
    "--index-url=http://127.0.0.1:9/simple",
    "--find-links http://127.0.0.1:9/",
    "-f http://127.0.0.1:9/",
    "--trusted-host 127.0.0.1",
    "-c http://127.0.0.1:9/constraints.txt",
    "-r /etc/passwd",
    "--requirement=/etc/passwd",
    "pytest\n--extra-index-url http://127.0.0.1:9/simple",  # a newline inside a TOML string
    "\ufeff--extra-index-url http://127.0.0.1:9/simple",  # behind a byte-order mark
    "\u2003--index-url http://127.0.0.1:9/simple",  # behind Unicode whitespace
    "probe>=${SECRET}",
    "probe @ http://127.0.0.1:9/${HOME}/x.whl",  # pip fills in the environment
    "pytest\x00",
    "pytest\u202e",  # control characters
]


@pytest.mark.parametrize("line", HOSTILE_STRINGS)
def test_only_name_based_requirements_reach_pip_from_pyproject(tmp_path: Path, line: str) -> None:
    for where, toml in [
        ("project.dependencies", f'[project]\nname = "p"\ndependencies = [{_toml(line)}]\n'),
        ("dependency-groups.test", f"[dependency-groups]\ntest = [{_toml(line)}]\n"),
        ("build-system.requires", f"[build-system]\nrequires = [{_toml(line)}]\n"),
    ]:
        src = checkout(tmp_path / where, {"pyproject.toml": toml})
        with pytest.raises(BadDeclaration) as refused:
            detect(src)
        message = str(refused.value)
        assert message.startswith(where) and len(message) < 300 and "root:" not in message, message


@pytest.mark.parametrize("line", HOSTILE_STRINGS)
def test_only_name_based_requirements_reach_pip_from_files(tmp_path: Path, line: str) -> None:
    if "\n" in line:
        return  # a line break ends a line in a file: its two halves are the cases above
    src = checkout(tmp_path, {"requirements.txt": f"pytest\n{line}\n"})
    with pytest.raises(BadDeclaration) as refused:
        detect(src)
    message = str(refused.value)
    assert message.startswith(("requirements.txt:2: ", "passwd: not a requirement file")), message
    assert "root:" not in message


def test_setup_cfg_lists_are_checked_like_the_rest(tmp_path: Path) -> None:
    src = checkout(
        tmp_path, {"setup.cfg": "[options]\ninstall_requires =\n    --extra-index-url http://127.0.0.1:9/\n"}
    )
    with pytest.raises(BadDeclaration, match="setup.cfg: install_requires: '--extra-index-url"):
        detect(src)


def test_what_reaches_pip_is_written_out_by_packaging(tmp_path: Path) -> None:
    src = checkout(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "p"\n'
            'dependencies = ["  Requests [socks]  >= 2 ; python_version>\'3.8\'", "\ufeffrich"]\n'
        },
    )
    assert detect(src).requirements == ('Requests[socks]>=2; python_version > "3.8"', "rich", "setuptools>=61", "wheel")


@pytest.mark.parametrize(
    "files",
    [
        {"pyproject.toml": "x = " + "[" * 60_000 + "]" * 60_000 + "\n"},  # deeper than Python's stack
        {
            "pyproject.toml": "[dependency-groups]\n"
            + "".join(f'g{i} = [{{include-group = "g{i + 1}"}}]\n' for i in range(5000))
            + 'g5000 = ["x"]\ntest = [{include-group = "g0"}]\n'
        },
        {"requirements.txt": "-r requirements.txt\n"},  # a file that includes itself
    ],
)
def test_deep_declarations_are_a_declaration_error_not_a_crash(tmp_path: Path, files) -> None:
    with pytest.raises(BadDeclaration):
        detect(checkout(tmp_path, files))


def _toml(text: str) -> str:
    """``text`` as a TOML basic string."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in text) + '"'
