import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import pythons
from orchestrator.config import load_config
from orchestrator.errors import ConfigError

GOOD = "repositories:\n  - name: demo\n    url: {repo}\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path, repo: Path) -> None:
    config = load_config(write(tmp_path, "repositories:\n  - name: demo\n    url: ./repo\n"))
    assert config.repositories[0].url == str(repo)
    assert config.state_dir == tmp_path / ".orchestrator"
    assert config.results_dir == tmp_path / "test_results"
    assert config.runner.parallelism == 2 and config.runner.network == "none"
    assert config.repositories[0].tracks("anything/at-all")


BAD = [
    ("runner:\n  parallelism: abc\n", "runner.parallelism"),
    ("runner:\n  parallelism: 0\n", "runner.parallelism"),
    ("runner:\n  timeout: -5\n", "runner.timeout"),
    ("runner:\n  memory: lots\n", "runner.memory"),
    ("runner:\n  pids: 2\n", "runner.pids"),
    ("runner:\n  max_log_bytes: '10'\n", "runner.max_log_bytes"),
    ("runner:\n  cpus: 0\n", "runner.cpus"),
    ("runner:\n  colour: red\n", "runner.colour: unknown key"),
    ("surprise: 1\n", "surprise: unknown key"),
    ("poll_interval: soon\n", "poll_interval"),
    ("retries: -1\n", "retries"),
    ("dispatcher:\n  port: 70000\n", "dispatcher.port"),
    ("dispatcher:\n  host: 0.0.0.0\n", "requires dispatcher.api_token"),
    ("state_dir: 5\n", "state_dir"),
    ("environments:\n  index_url: ftp://mirror/simple\n", "environments.index_url"),
    ("environments:\n  extra_index_urls: ['http://host/${SECRET}/simple']\n", "environments.extra_index_urls[0]"),
    ("environments:\n  timeout: 0\n", "environments.timeout"),
    (
        "runner:\n  image: yes\n",
        "runner.image: Input should be a valid string (got True): YAML read it as a bool; quote it to mean the text",
    ),
]


@pytest.mark.parametrize("extra, expected", BAD)
def test_bad_values_name_the_key(tmp_path: Path, repo: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.format(repo=repo) + extra))
    message = str(info.value)
    assert expected in message and str(tmp_path / "config.yaml") in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("repositories:\n  - name: Demo!\n    url: {repo}\n", "repositories[0].name"),
        ("repositories:\n  - name: ../x\n    url: {repo}\n", "repositories[0].name"),
        ("repositories:\n  - name: demo\n    url: ./missing\n", "repositories[0].url: no such repository"),
        ("repositories:\n  - name: demo\n    url: {repo}\n    branches: ['[unclosed']\n", "repositories[0].branches"),
        ("repositories:\n  - name: demo\n    url: {repo}\n    branches: []\n", "repositories[0].branches"),
        ("repositories:\n  - {{name: a, url: {repo}}}\n  - {{name: a, url: {repo}}}\n", "used twice"),
        ("repositories: []\n", "repositories"),
        (
            "repositories:\n  - name: demo\n    url: {repo}\n    shards: 0\n",
            "repositories[0].shards: '0': a number of containers",
        ),
        ("repositories:\n  - name: demo\n    url: {repo}\n    shards: many\n", "from 1 to 64, or auto"),
        (
            "repositories:\n  - name: demo\n    url: {repo}\n    shards: 2\n    command: make\n",
            "cannot be used with command",
        ),
        ("repositories:\n  - name: demo\n    url: {repo}\n    shard_unit: file\n", "repositories[0].shard_unit"),
        ("poll_interval: 5\n", "repositories: Field required"),
        ("- just a list\n", "expected a mapping"),
        ("repositories: [\n", "not valid YAML at line"),
    ],
)
def test_bad_structure(tmp_path: Path, repo: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text.format(repo=repo)))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh -c touch% /tmp/pwned ://example.com/x",
        "fd::17",
        "foo::bar",
        "-uhack",
        "--upload-pack=touch /tmp/pwned",
        "ftp://example.com/repo.git",
        "https://-oProxyCommand=x/repo.git",
        "ssh://-oProxyCommand=touch%20pwned/x",
    ],
)
def test_urls_git_would_run_a_program_for_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"repositories:\n  - name: demo\n    url: {url!r}\n"))
    assert "repositories[0].url" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a/b.git",
        "http://127.0.0.1:8080/x",
        "ssh://git@host/x.git",
        "git://host/x",
        "git@example.com:team/x.git",
        "host.example:x.git",
    ],
)
def test_urls_git_fetches_as_usual_are_accepted(tmp_path: Path, url: str) -> None:
    config = load_config(write(tmp_path, f"repositories:\n  - name: demo\n    url: {url!r}\n"))
    assert config.repositories[0].url == url


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, repo: Path) -> None:
    path = write(tmp_path, GOOD.format(repo=repo) + "runner:\n  parallelism: many\n")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "runner.parallelism" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.write_text("a file"), "is not a directory"),
        (lambda p: p.symlink_to(p.parent / "nowhere"), "leads nowhere"),
        (lambda p: p.symlink_to(p), "leads nowhere"),  # a link to itself: a loop
    ],
)
@pytest.mark.parametrize("key", ["state_dir", "results_dir"])
def test_directories_that_cannot_be_written_are_refused_at_start(tmp_path: Path, repo: Path, make, words, key) -> None:
    path = write(tmp_path, GOOD.format(repo=repo) + f"{key}: ./odd\n")
    make(tmp_path / "odd")
    for command in (["run", "--once"], ["dispatcher"], ["submit", "HEAD"], ["poll"]):
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.count("\n") == 1 and f"{key}: " in proc.stderr and words in proc.stderr


def test_a_python_the_images_do_not_offer_is_refused(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"repositories:\n  - name: demo\n    url: {repo}\n    python: '3.12'\n"))
    message = str(info.value)
    assert "repositories[0].python" in message and "offer 3.11, 3.13, 3.14, 3.15, pypy3.11" in message
    assert message.count("\n") == 0


@pytest.mark.parametrize(
    ("value", "pythons_", "matrix"),
    [
        ("'3.13'", ("3.13",), False),
        ("['3.11', '3.14', pypy3, '3.14']", ("3.11", "3.14", "pypy3.11"), True),
        ("auto", ("3.11",), True),  # no requires-python read here: the default alone
    ],
)
def test_one_python_several_or_auto(tmp_path: Path, repo: Path, value: str, pythons_: tuple, matrix: bool) -> None:
    config = load_config(write(tmp_path, f"repositories:\n  - name: demo\n    url: {repo}\n    python: {value}\n"))
    assert config.repositories[0].pythons_for(None) == pythons_ and config.repositories[0].matrix is matrix


@pytest.mark.parametrize("value", ["['3.11', '2.7']", "[]", "[auto]", "3.14"])
def test_a_list_of_pythons_names_offered_ones(tmp_path: Path, repo: Path, value: str) -> None:
    """An unquoted 3.14 is YAML's float, not a name: refused with the rest, on one line."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"repositories:\n  - name: demo\n    url: {repo}\n    python: {value}\n"))
    assert "repositories[0].python" in str(info.value) and str(info.value).count("\n") == 0


@pytest.mark.parametrize(
    ("requires", "allowed"),
    [
        (">=3.11", ("3.11", "3.13", "3.14", "3.15")),
        (">=3.12,<3.15", ("3.13", "3.14")),
        ("~=3.14.0", ("3.14",)),
        ("<3", ("3.11",)),  # allows none offered: the default, not nothing
        ("not a specifier", ("3.11",)),
        (None, ("3.11",)),
    ],
)
def test_auto_is_every_offered_cpython_requires_python_allows(requires, allowed) -> None:
    assert pythons.allowed_by(requires) == allowed


def test_requires_python_is_read_as_data() -> None:
    from orchestrator.environment.needs import requires_python

    assert requires_python('[project]\nrequires-python = ">=3.12"\n') == ">=3.12"
    assert requires_python("[project]\nrequires-python = 3\n") is None
    assert requires_python("[project\n") is None
    assert requires_python("x = " + "[" * 100_000) is None
    assert requires_python('project = "a string"\n') is None


def test_each_python_runs_in_its_own_runner_image(tmp_path: Path, repo: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            f"repositories:\n  - name: demo\n    url: {repo}\n    python: '3.13'\n"
            "runner:\n  image: registry.local:5000/ci/runner:v2\n",
        )
    )
    assert config.repositories[0].python == "3.13"
    assert config.runner.image_for("3.11") == "registry.local:5000/ci/runner:v2"
    assert config.runner.image_for("3.13") == "registry.local:5000/ci/runner:py3.13"
    assert pythons.runner_image("localhost:5000/runner", "3.13") == "localhost:5000/runner:py3.13"
    assert config.runner.image_for("pypy3.11") == "registry.local:5000/ci/runner:pypy3.11"


@pytest.mark.parametrize("line", ["--index-url https://evil.example/simple", "-f /tmp/wheels", "-e git+https://x/y"])
def test_install_lines_are_requirements_only(tmp_path: Path, repo: Path, line: str) -> None:
    with pytest.raises(ConfigError, match=r"repositories\[0\].install"):
        load_config(write(tmp_path, f"repositories:\n  - name: demo\n    url: {repo}\n    install: [{line!r}]\n"))


@pytest.mark.parametrize("glob", ["/etc/*", "../outside/*", "dist/../../x"])
def test_an_artifacts_glob_must_stay_in_the_workspace(tmp_path: Path, repo: Path, glob: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"repositories:\n  - name: a\n    url: {repo}\n    artifacts: ['{glob}']\n"))
    message = str(info.value)
    assert "repositories[0].artifacts" in message and "relative to the workspace, like 'dist/*.whl'" in message
    assert "\n" not in message


def test_yaml_words_that_read_as_booleans_stay_words_as_keys(tmp_path: Path, repo: Path) -> None:
    """YAML 1.1 reads a bare `on` as true: `notify: {on: all}` failed with "Keys should be strings"."""
    config = load_config(write(tmp_path, GOOD.format(repo=repo) + "notify:\n  on: all\n  webhooks: []\n"))
    assert config.notify.on == "all"
    off = load_config(
        write(
            tmp_path,
            GOOD.format(repo=repo) + "notify: {on: failures}\nrepositories:\n"
            f"  - name: x\n    url: {repo}\n    env: {{no: '1', yes: '2'}}\n    coalesce: yes\n",
        )
    )
    assert off.notify.on == "failures" and off.repositories[0].env == {"no": "1", "yes": "2"}
    assert off.repositories[0].coalesce is True  # as a value, a YAML boolean is still one
