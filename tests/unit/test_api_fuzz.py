"""A property-based fuzz of the whole API from its own OpenAPI description (schemathesis):
whatever a client sends, the answer is never a 5xx."""

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.helpers import GitRepo, Web  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    base: Path = tmp_path_factory.mktemp("fuzz")
    repo = GitRepo(base / "upstream")
    repo.commit("root", {"tests/test_a.py": "def test_a(): pass\n"})
    web = Web(
        base,
        repo,
        dispatcher={
            "host": "127.0.0.1",
            "port": 8888,  # schemathesis calls it "testserver"
            "allowed_hosts": ["testserver", "localhost", "127.0.0.1"],
        },
    )
    web.jobs.poll()
    yield schemathesis.openapi.from_asgi("/openapi.json", web.app())
    web.close()


def test_no_server_errors(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_5xx(case) -> None:
            response = case.call()
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )

        no_5xx()
