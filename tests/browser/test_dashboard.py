"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium)
against the real orchestrator, real containers and real commits."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import requests

from runner_image import orchestrator_protocol as protocol
from tests.helpers import PASSING, free_port

pytestmark = pytest.mark.docker

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

SCREENSHOTS = protocol.SCREENSHOTS  # a folder: the pages are saved there as pictures (docs: the README's)
CHATTY_FAILING = (
    "import time\n"
    + "".join(f"def test_step_{i}():\n    time.sleep(0.7)\n" for i in range(6))
    + "def test_answer():\n    assert 6 * 7 == 41, 'the answer should be 42'\n"
)


@pytest.fixture
def browser():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("chromium and chromedriver are needed (scripts/setup.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    # chromium's own temporary folders, removed after it: a short path, since its singleton
    # socket goes there (a unix socket's path is at most 107 bytes; the test's folder is longer)
    scratch = tempfile.mkdtemp(prefix="chromium-")
    chrome = webdriver.Chrome(options=options, service=Service(driver, env={**os.environ, "TMPDIR": scratch}))
    yield chrome
    chrome.quit()
    shutil.rmtree(scratch, ignore_errors=True)


def row_status(browser, sha: str) -> str | None:
    """The status shown in the commit list (read in one go: the rows are re-rendered live)."""
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#jobs tbody tr')].map(r => [r.textContent, r.dataset.status]);"
    )
    return next((status for text, status in rows if sha[:10] in text), None)


def test_dashboard_follows_a_commit_from_queued_to_failed(orch, browser) -> None:
    orch.repo.commit("root", PASSING)
    orch.configure(runner={"parallelism": 1})
    assert orch.cli("run", "--once").returncode == 0
    run = orch.start("run")
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    orch.wait_for(lambda: _up(base), timeout=30)
    browser.get(base + "/")
    assert "orchestrator" in browser.title
    slow = orch.repo.commit("slow and chatty", {"tests/test_chatty.py": CHATTY_FAILING})
    later = orch.repo.commit("queued behind it", {"tests/test_chatty.py": None, **PASSING})
    assert orch.wait_for(lambda: row_status(browser, later) == "queued")  # appears by itself, queued
    assert orch.wait_for(lambda: row_status(browser, slow) == "running")
    # the job page: the live log grows while the container runs
    browser.find_element(By.LINK_TEXT, slow[:10]).click()
    log = browser.find_element(By.ID, "log")
    first = orch.wait_for(lambda: len(log.text) if "test_step_1" in log.text else 0, timeout=30)
    assert browser.find_element(By.ID, "status").text == "running"
    grown = orch.wait_for(
        lambda: len(log.text) if len(log.text) > first and "test_step_4" in log.text else 0, timeout=30
    )
    assert grown > first
    # then it fails: the page is rendered again by the server, the failing test's message on top
    assert orch.wait_for(lambda: text_of(browser, "status") == "failed", timeout=60)
    failure = orch.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".failure"), timeout=15)[0]
    assert "test_answer" in failure.text and "the answer should be 42" in failure.text
    assert orch.wait_for(lambda: "1 failed" in (text_of(browser, "log") or ""), timeout=15)
    record = browser.find_element(By.CSS_SELECTOR, ".failure .record")
    assert "first run of it on main" in record.text  # it is a new test
    if os.environ.get(SCREENSHOTS):
        browser.save_screenshot(os.path.join(os.environ[SCREENSHOTS], "job.png"))
    browser.get(base + "/")
    assert orch.wait_for(lambda: row_status(browser, slow) == "failed")
    assert orch.wait_for(lambda: row_status(browser, later) == "passed"), orch.cli("status").stdout
    browser.get(base + "/badge/demo/main.svg")
    assert "passing" in browser.page_source
    # the branch's page: a bar per run (root, slow, later), coloured by status, with its text alternative
    browser.get(base + "/repos/demo/main")
    bars = browser.find_elements(By.CSS_SELECTOR, "#durations rect.bar")
    assert len(bars) == 3 and [b.get_attribute("fill") for b in bars][1] == "#cb2431"
    chart = browser.find_element(By.CSS_SELECTOR, "#durations svg")
    assert "duration of the last 3 runs" in chart.get_attribute("aria-label")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#slowest .spark")) >= 1
    if os.environ.get(SCREENSHOTS):  # SCREENSHOTS=docs: the README's picture
        browser.save_screenshot(os.path.join(os.environ[SCREENSHOTS], "branch.png"))
    # one test's page: its runs on the branch, a bar each, the commit under each
    browser.get(base + "/tests/demo/tests.test_chatty::test_answer?branch=main")
    assert "tests.test_chatty::test_answer" in browser.find_element(By.TAG_NAME, "main").text
    assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.chart text.label")] == [slow[:7]]
    if os.environ.get(SCREENSHOTS):
        browser.find_element(By.TAG_NAME, "main").screenshot(os.path.join(os.environ[SCREENSHOTS], "test.png"))
    browser.get(base + "/")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".load rect.bar")) == 2 * 61
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0


FLAKY_ONCE = """import os

def test_flaky_once():
    marker = "/tmp/ran-before"   # the container's own /tmp: the re-run finds what the first run left
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise AssertionError("fails the first time only")
"""


def test_a_flaky_test_is_ranked_and_a_split_suite_opens_to_its_shards(orch, browser) -> None:
    """One commit, its suite split across two containers, one test failing and then passing
    on re-run: the Flaky tests page ranks it; the front page's row of the commit opens to
    its two shards (and stays open while the list refreshes); the job page lists them."""
    sha = orch.repo.commit(
        "flaky, split", {"tests/test_f.py": FLAKY_ONCE, "tests/test_g.py": "def test_fine():\n    pass\n"}
    )
    orch.configure(runner={"parallelism": 2}, repository={"shards": 2, "rerun_failures": 1})
    run = orch.start("run")
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    orch.wait_for(lambda: _up(base), timeout=30)
    orch.wait_for(lambda: orch.has_result(sha), timeout=90)
    assert orch.result(sha)["flaky"] == ["tests.test_f::test_flaky_once"]
    browser.get(base + "/flaky")
    row = orch.wait_for(lambda: browser.find_elements(By.XPATH, "//td[contains(., 'test_flaky_once')]"), timeout=15)
    assert "tests.test_f::test_flaky_once" in row[0].text
    if os.environ.get(SCREENSHOTS):
        browser.find_element(By.TAG_NAME, "main").screenshot(os.path.join(os.environ[SCREENSHOTS], "flaky.png"))
    browser.get(base + "/")
    summary = orch.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs details.shards summary"), timeout=15)
    assert summary[0].text == "2 shards"
    summary[0].click()
    shown = lambda: [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#jobs details.shards[open] li")]  # noqa: E731
    assert len(orch.wait_for(shown, timeout=5)) == 2
    browser.execute_script("return new Promise(r => setTimeout(r, 2500));")  # two refreshes of the list
    assert [text.split()[0] for text in shown()] == ["passed", "passed"]
    if os.environ.get(SCREENSHOTS):
        browser.find_element(By.ID, "jobs").screenshot(os.path.join(os.environ[SCREENSHOTS], "shards.png"))
    browser.get(base + f"/jobs/{orch.result(sha)['id']}")
    rows = orch.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#shards tbody tr"), timeout=15)
    assert len(rows) == 2 and "output.1.log" in rows[0].text
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0


def test_a_commit_on_two_pythons_is_one_row_with_a_cell_each(orch, browser) -> None:
    """The row's status is the commit's (the worst of its variants'); each Python's cell
    links to its own job page, and the badge exists for the branch and for each Python."""
    sha = orch.repo.commit(
        "new syntax", {"tests/test_v.py": "import sys\n\ndef test_v():\n    assert sys.version_info < (3, 13)\n"}
    )
    orch.configure(repository={"python": ["3.11", "3.13"]})
    run = orch.start("run")
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    orch.wait_for(lambda: _up(base), timeout=30)
    orch.wait_for(lambda: orch.result(sha) if orch.has_result(sha) else None, timeout=90)
    orch.wait_for(lambda: orch.result(sha)["status"] == "failed", timeout=90)
    browser.get(base + "/")
    cells = orch.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs .variants a"), timeout=15)
    assert [(c.text, c.get_attribute("href").rsplit("/", 1)[1]) for c in cells] == [
        ("3.11 passed", str(orch.result(sha)["variants"][0]["id"])),
        ("3.13 failed", str(orch.result(sha)["variants"][1]["id"])),
    ]
    assert row_status(browser, sha) == "failed"
    rows = browser.execute_script("return document.querySelectorAll('#jobs tbody tr').length")
    assert rows == 1
    assert b"failing" in requests.get(f"{base}/badge/demo/main.svg", timeout=10).content
    assert b"passing" in requests.get(f"{base}/badge/demo/main.svg?python=3.11", timeout=10).content
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0


def _script(browser, script: str):
    """What ``script`` returns; None while the page is between two loads."""
    try:
        return browser.execute_script(script)
    except Exception:  # a page between two loads
        return None


def text_of(browser, element_id: str) -> str | None:
    """An element's text, read in one go (the page may be reloading: never a stale element)."""
    try:
        return browser.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;", element_id
        )
    except Exception:  # a page between two loads
        return None


def _up(base: str) -> bool:
    import requests

    try:
        return requests.get(base + "/healthz", timeout=2).ok
    except requests.RequestException:
        return False


ATTACK = """<!doctype html><title>cat pictures</title>
<iframe name="sink" id="sink"></iframe>
<form id="f" method="POST" action="{base}/api/jobs/1/retry" enctype="text/plain" target="sink">
<input name='{{"x":"' value='"}}'></form>
<script>
document.getElementById("sink").onload = () => {{ if (document.title === "sent") document.title = "done"; }};
fetch("{base}/api/jobs/1/retry", {{method: "POST", mode: "no-cors", body: "{{}}"}}).finally(() => {{
  document.title = "sent"; document.getElementById("f").submit();
}});
</script>"""


def test_a_page_of_another_origin_cannot_act_for_the_user(orch, browser, tmp_path) -> None:
    """A real browser, a real attacker page on another origin: its form and its no-cors
    fetch are refused; the dashboard's own Retry button works."""
    sha = orch.repo.commit("root", PASSING)
    orch.configure()
    assert orch.cli("run", "--once").returncode == 0
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    dispatcher = orch.start("dispatcher")
    orch.wait_for(lambda: _up(base), timeout=30)
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(ATTACK.format(base=base))
    evil = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := free_port())],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        orch.wait_for(lambda: _answers(f"http://127.0.0.1:{port}/index.html"), timeout=30)
        browser.get(f"http://127.0.0.1:{port}/index.html")
        assert orch.wait_for(lambda: browser.title == "done", timeout=30)  # both were sent, and answered
    finally:
        evil.terminate()
        evil.wait(timeout=10)
    job = requests.get(f"{base}/api/jobs/1", timeout=5).json()
    assert job["status"] == "passed" and job["attempts"] == 1  # nothing happened
    browser.get(f"{base}/jobs/1")
    browser.find_element(By.ID, "retry").click()

    def retried() -> bool:
        job = requests.get(f"{base}/api/jobs/1", timeout=5).json()
        return job["attempts"] == 2 and job["status"] == "passed"

    assert orch.wait_for(retried, timeout=60)
    assert orch.result(sha)["attempts"] == 2
    dispatcher.send_signal(signal.SIGTERM)
    assert dispatcher.wait(timeout=30) == 0


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def test_the_merge_queue_page_shows_a_request_and_its_cancel_button_takes_it_out(orch, browser) -> None:
    """A request tested on its candidate (a slow suite), on /merges in the browser; its
    Cancel button takes it out of the queue, and the page says so."""
    orch.repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    orch.repo.commit("root", PASSING)
    orch.repo.git("checkout", "-q", "-b", "alice")
    orch.repo.commit("slow work", {"tests/test_slow.py": "import time\n\ndef test_slow():\n    time.sleep(30)\n"})
    orch.repo.git("checkout", "-q", "main")
    orch.configure(
        runner={"parallelism": 1, "timeout": 120},
        repository={"branches": ["main"], "merge_queue": {"target": "main"}},  # alice is tested only as a candidate
    )
    assert orch.cli("merge", "alice").returncode == 0
    orch.start("run")
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    orch.wait_for(lambda: _up(base), timeout=30)
    state = lambda: requests.get(base + "/api/merges", timeout=5).json()[0]["state"]  # noqa: E731
    assert orch.wait_for(lambda: state() == "testing", timeout=60)
    browser.get(base + "/merges")
    row = browser.find_element(By.CSS_SELECTOR, "table.merges tbody tr")
    assert row.get_attribute("data-state") == "testing" and "alice" in row.text
    if os.environ.get(SCREENSHOTS):
        browser.find_element(By.TAG_NAME, "main").screenshot(os.path.join(os.environ[SCREENSHOTS], "merges.png"))
    row.find_element(By.CSS_SELECTOR, "button.cancel-merge").click()
    assert orch.wait_for(lambda: state() == "cancelled", timeout=30)
    # the page reloads itself after the cancel: read the row in one go, never a stale element
    first_row_state = "const r = document.querySelector('table.merges tbody tr'); return r && r.dataset.state;"
    assert orch.wait_for(lambda: _script(browser, first_row_state) == "cancelled", timeout=30)
    assert not browser.find_elements(By.CSS_SELECTOR, "button.cancel-merge")
    # and its candidate's job, which nobody needs now, is stopped
    candidate_job = requests.get(base + "/api/merges", timeout=5).json()[0]["job_id"]
    job = lambda: requests.get(f"{base}/api/jobs/{candidate_job}", timeout=5).json()["status"]  # noqa: E731
    assert orch.wait_for(lambda: job() == "cancelled", timeout=60)
    final = ("passed", "failed", "error", "timed_out", "cancelled", "skipped")
    assert orch.wait_for(  # the root's own job too: nothing left running when the dispatcher stops
        lambda: all(j["status"] in final for j in requests.get(base + "/api/jobs", timeout=5).json()), timeout=120
    )


def test_an_operators_day_quarantine_from_the_job_page_and_search_opens_a_line(orch, browser) -> None:
    """A failing test quarantined from its job's page (the button, a reason at the prompt),
    the job retried green and saying why; then a search across 100 indexed jobs, whose hit
    opens the log at its line; and a paused repository on the dashboard."""
    from orchestrator.models import JobStatus, transition, utcnow
    from orchestrator.results import search
    from orchestrator.results.report import Report
    from orchestrator.store import NewCommit, Store

    sha = orch.repo.commit(
        "red", {"tests/test_ok.py": "def test_ok():\n    pass\n\ndef test_bad():\n    assert 0, 'x'\n"}
    )
    orch.configure(runner={"parallelism": 1})
    assert orch.cli("run", "--once").returncode == 1
    orch.start("run")
    base = f"http://127.0.0.1:{orch.config.dispatcher.port}"
    orch.wait_for(lambda: _up(base), timeout=30)
    job_id = requests.get(base + "/api/jobs", timeout=5).json()[0]["id"]
    browser.get(f"{base}/jobs/{job_id}")
    browser.find_element(By.CSS_SELECTOR, ".failure button.quarantine").click()
    prompt = orch.wait_for(lambda: _alert(browser), timeout=10)
    prompt.send_keys("flaky on CI, issue 12")
    prompt.accept()
    assert orch.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".failure.quarantined"), timeout=15)
    browser.find_element(By.ID, "retry").click()
    assert orch.wait_for(lambda: text_of(browser, "status") == "passed", timeout=90)
    note = orch.wait_for(lambda: browser.find_elements(By.ID, "quarantined"), timeout=15)[0]
    assert "Passed with 1 quarantined test failing" in note.text and "tests.test_ok::test_bad" in note.text
    assert "1 of them quarantined" in browser.find_element(By.ID, "tests").text  # never silently green
    if os.environ.get(SCREENSHOTS):
        browser.find_element(By.TAG_NAME, "main").screenshot(os.path.join(os.environ[SCREENSHOTS], "quarantine.png"))
    # a paused repository says so on the dashboard
    assert orch.cli("pause", "demo", "--reason", "runner upgrade").returncode == 0
    browser.get(base + "/")
    assert "runner upgrade" in browser.find_element(By.CSS_SELECTOR, ".repo").text
    assert browser.find_elements(By.CSS_SELECTOR, "button.resume")
    if os.environ.get(SCREENSHOTS):
        browser.save_screenshot(os.path.join(os.environ[SCREENSHOTS], "dashboard.png"))
    # 100 more jobs, each with a log of its own, indexed as a job's end indexes it (made
    # ended by hand: the repository is paused, so the dispatcher never takes them)
    store = Store(orch.config.db_path)
    try:
        for n in range(100):
            fake = f"{n + 1:040x}"
            store.record_commits("demo", [NewCommit(fake, f"job {n}", ("main",))])
            queued = store.by_commit("demo", fake)  # the repository is paused: the dispatcher leaves them be
            job = store.apply(queued, transition(queued, JobStatus.RUNNING, utcnow()))
            done = store.apply(job, transition(job, JobStatus.FAILED, utcnow(), exit_code=1))
            log = orch.path(fake, "output.log")  # where the job's log is, as its attempt writes it
            log.parent.mkdir(parents=True)
            log.write_text("".join(f"step {k} of job {n}\n" for k in range(200)) + f"OSError: disk quota {n}\n")
            search.index(store, done, log, Report(None), 1)
    finally:
        store.close()
    browser.get(base + "/search?q=" + requests.utils.quote('"disk quota 57"'))
    hits = browser.find_elements(By.CSS_SELECTOR, ".hit")
    assert len(hits) == 1 and "line 201" in hits[0].text and "step 199 of job 57" in hits[0].text
    if os.environ.get(SCREENSHOTS):
        browser.find_element(By.TAG_NAME, "main").screenshot(os.path.join(os.environ[SCREENSHOTS], "search.png"))
    hits[0].find_element(By.PARTIAL_LINK_TEXT, "job").click()
    assert orch.wait_for(lambda: browser.current_url.endswith("/log#L201"), timeout=10)
    target = browser.execute_script("const t = document.querySelector(':target'); return t && t.textContent;")
    assert target is not None and "OSError: disk quota 57" in target  # the line itself, marked
    assert len(browser.find_elements(By.CSS_SELECTOR, "pre.numbered .line")) == 201
    if os.environ.get(SCREENSHOTS):
        browser.save_screenshot(os.path.join(os.environ[SCREENSHOTS], "log.png"))
    assert sha


def _alert(browser):
    try:
        return browser.switch_to.alert
    except Exception:  # none yet
        return None
