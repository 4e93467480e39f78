"""What people look at: the dashboard, a job's page, and the status badges. The pages
read through ``jobs.py`` like the JSON API; their live parts call that API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from orchestrator.control.port import JobRef
from orchestrator.errors import UsageError
from orchestrator.web.api import Jobs
from orchestrator.web.charts import Bar, bar_chart, sparkline
from orchestrator.workspace import read_regular_file

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
JobId = Annotated[int, PathParam(ge=1, le=2**62)]

BADGE = {
    "passed": ("passing", "#2ea44f"),
    "failed": ("failing", "#cb2431"),
    "error": ("error", "#8250df"),
    "timed_out": ("timed out", "#dbab09"),
    "running": ("running", "#0969da"),
    "queued": ("queued", "#6e7781"),
    "cancelled": ("cancelled", "#6e7781"),
    "skipped": ("skipped", "#afb8c1"),
}


router = APIRouter()


@router.get("/badge/{name}/{branch:path}", response_class=Response)
def badge(name: str, branch: str, jobs: Jobs, python: str | None = None) -> Response:
    """The branch's newest commit: its status (the worst of its variants'), or with
    ``?python=`` its variant's on that Python."""
    jobs.repository(name)
    if not branch.endswith(".svg"):
        raise HTTPException(404, "badges end in .svg")
    if branch.endswith("/coverage.svg"):
        return _coverage_badge(jobs, name, branch[: -len("/coverage.svg")])
    job = jobs.latest(name, branch[:-4], python[:20] if python else None)
    label = BADGE.get(job["status"] if job else "", ("unknown", "#9f9f9f"))
    return Response(badge_svg(*label), media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})


def _coverage_badge(jobs: Jobs, name: str, branch: str) -> Response:
    """The line coverage of the branch's newest job that measured it (its runs only: not
    the whole trends page's queries)."""
    value = jobs.insight.coverage(name, branch)
    if value is None:
        label = ("unknown", "#9f9f9f")
    else:
        label = (f"{value:.0f}%", "#2ea44f" if value >= 80 else "#dbab09" if value >= 50 else "#cb2431")
    return Response(
        badge_svg(*label, label="coverage"), media_type="image/svg+xml", headers={"Cache-Control": "no-cache"}
    )


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, jobs: Jobs) -> Response:
    health = jobs.health()
    repos = [
        {
            "name": r.name,
            "url": r.url,
            "branches": jobs.branches(r.name),
            "health": health["repositories"][r.name],
            "paused": health["paused"].get(r.name),
            "schedule": health["schedules"].get(r.name),
        }
        for r in jobs.config.repositories
    ]
    load = jobs.insight.load()
    charts = {
        f"{kind}_chart": Markup(
            bar_chart(
                [
                    Bar(
                        f"{p['at'][11:16]} UTC: {p[kind]} {kind}",
                        p[kind],
                        "skipped" if kind == "queued" else "passed",
                        tick=p["at"][11:16],
                    )
                    for p in load
                ],
                f"jobs {kind} each minute of the last hour, oldest first; now {load[-1][kind]}",
                unit="jobs",
                width=360,
                height=60,
                whole=True,
            )
        )
        for kind in ("queued", "running")
    }
    return TEMPLATES.TemplateResponse(
        request,
        "index.html",
        {
            "repos": repos,
            "jobs": jobs.list_jobs(limit=50),
            **charts,
            "token_required": request.app.state.token_required,
        },
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId, jobs: Jobs) -> Response:
    """A job: rendered here, its failing tests and their records with it, so that it reads
    with JavaScript off (the log is then a link); scripts only keep a running one live."""
    ref = JobRef(id=job_id)
    job = jobs.show(ref)
    failures = jobs.failures(ref) if job["status"] not in ("queued", "running") else []
    quarantined = {e["test"] for e in jobs.quarantined(job["repository"])}
    for failure in failures:
        failure["record"] = record_words(failure["history"])
        failure["in_quarantine"] = failure["test"] in quarantined
    return TEMPLATES.TemplateResponse(
        request,
        "job.html",
        {
            "job": job,
            "failures": failures,
            "deliveries": jobs.deliveries(ref),
            "token_required": request.app.state.token_required,
        },
    )


def record_words(history: dict) -> str:
    """A failing test's record in words: since when it fails on its branch, or how often
    it failed in the runs there before ("first failure on main")."""
    branch = history.get("branch") or "this branch"
    if history.get("since"):
        since = history["since"]
        return f"failing on {branch} since {since['commit'][:10]} ({since['commits']} commits)"
    runs, failed = len(history["recent"]), history["failed_recent"]
    if not runs:
        return f"first run of it on {branch}"
    if not failed:
        return f"first failure on {branch} (passed its last {runs} run{'s' if runs != 1 else ''})"
    return f"failed {failed} of its last {runs} run{'s' if runs != 1 else ''} on {branch}"


LOG_PAGE_BYTES = 16 * 1024 * 1024  # more of a log than that is a download, not a page


@router.get("/jobs/{job_id}/log", response_class=HTMLResponse)
def log_page(request: Request, job_id: JobId, jobs: Jobs) -> Response:
    """A finished job's log with a number and an anchor on each line (``#L42``: where a
    search hit links), escaped: the log is the suite's output, shown as text."""
    job = jobs.job(JobRef(id=job_id))
    path, _ = jobs.log_source(job)
    data = read_regular_file(path, LOG_PAGE_BYTES) if job.status.final else None
    lines = data.decode("utf-8", "replace").split("\n") if data is not None else []
    if lines and lines[-1] == "":
        lines.pop()
    return TEMPLATES.TemplateResponse(
        request,
        "log.html",
        {
            "job": jobs.document(job),
            "lines": lines,
            "too_large": data is None and path.is_file(),
            "token_required": request.app.state.token_required,
        },
    )


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    jobs: Jobs,
    q: Annotated[str, Query(max_length=500)] = "",
    repository: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Every log, failing test and reason that matches, newest first; a query the index
    cannot read is said on the page (422), not a server error."""
    hits, error = [], None
    if q.strip():
        try:
            hits = jobs.search(q, repository or None)
        except UsageError as exc:
            error = str(exc)
    return TEMPLATES.TemplateResponse(
        request,
        "search.html",
        {
            "q": q,
            "repository": repository or "",
            "repositories": [r.name for r in jobs.config.repositories],
            "hits": hits,
            "error": error,
            "token_required": request.app.state.token_required,
        },
        status_code=422 if error else 200,
    )


@router.get("/repos/{name}", response_class=HTMLResponse)
@router.get("/repos/{name}/{branch:path}", response_class=HTMLResponse)
def repository_page(request: Request, name: str, jobs: Jobs, branch: str | None = None) -> Response:
    """A repository's (or one branch's) trends, in pictures with their text alternatives."""
    data = jobs.insight.trends(name, branch[:255] if branch else None)
    where = f"{name}{'/' + branch if branch else ''}"
    runs, rates = data["runs"], data["pass_rate"]
    durations, pass_rate, coverage = _trend_charts(runs, rates, where)
    covered = any(r.get("coverage") is not None for r in runs)
    slowest = [
        {**s, "spark": Markup(sparkline(s["recent_s"], f"{s['test_id']}: last {len(s['recent_s'])} durations"))}
        for s in data["slowest"]
    ]
    branches = [b for b, _ in jobs.branches(name)]
    return TEMPLATES.TemplateResponse(
        request,
        "repository.html",
        {
            "repository": name,
            "branch": branch,
            "branches": branches,
            "runs": runs,
            "rates": rates,
            "durations": Markup(durations),
            "pass_rate": Markup(pass_rate),
            "slowest": slowest,
            "coverage": Markup(coverage) if covered else None,
            "token_required": request.app.state.token_required,
        },
    )


def _trend_charts(runs: list[dict[str, Any]], rates: list[dict[str, Any]], where: str) -> tuple[str, str, str]:
    """The repository page's three charts: each run's duration, each day's pass rate, each
    run's line coverage (SVG, each with its text alternative)."""
    durations = bar_chart(
        [
            Bar(
                f"{r['commit'][:10]}: {r['status']}, {r['duration_s']:.1f} s",
                r["duration_s"],
                r["status"],
                tick=r["commit"][:7],
            )
            for r in runs
        ],
        f"duration of the last {len(runs)} runs of {where}, oldest first, coloured by status",
    )
    pass_rate = bar_chart(
        [
            Bar(
                f"{d['day']}: {d['passed']} of {d['tested']} passed ({100 * d['passed'] / d['tested']:.0f} %)",
                100,
                "passed",
                tick=d["day"][5:],
                parts=(
                    (100 * d["passed"] / d["tested"], "passed"),
                    (100 * (d["tested"] - d["passed"]) / d["tested"], "failed"),
                ),
            )
            for d in rates
        ],
        f"share of the runs that passed each day on {where} (green passed, red not), {len(rates)} days",
        unit="%",
        top=100,
        height=100,
    )
    covered = [r for r in runs if r.get("coverage") is not None]
    coverage = bar_chart(
        [
            Bar(f"{r['commit'][:10]}: {r['coverage']:.1f} % of lines", r["coverage"], "passed", tick=r["commit"][:7])
            for r in covered
        ],
        f"line coverage of the last {len(covered)} runs of {where} that measured it",
        unit="%",
        top=100,
        height=80,
    )
    return durations, pass_rate, coverage


@router.get("/merges", response_class=HTMLResponse)
@router.get("/merges/{name}", response_class=HTMLResponse)
def merges_page(request: Request, jobs: Jobs, name: str | None = None) -> Response:
    """Each merge queue: its open requests in order, then the ended ones (rendered here: it
    reads without JavaScript; only Cancel needs it)."""
    repos = [jobs.repository(name)] if name else [r for r in jobs.config.repositories if r.merge_queue]
    queues = [{"repo": r, "merges": jobs.merges(r.name)} for r in repos]
    return TEMPLATES.TemplateResponse(
        request, "merges.html", {"queues": queues, "token_required": request.app.state.token_required}
    )


@router.get("/flaky", response_class=HTMLResponse)
def flaky_page(request: Request, jobs: Jobs) -> Response:
    return TEMPLATES.TemplateResponse(
        request,
        "flaky.html",
        {
            "tests": jobs.insight.flaky(),
            "quarantined": (entries := jobs.quarantined()),
            "quarantined_ids": {(e["repository"], e["test"]) for e in entries},
            "days": jobs.config.quarantine.days,
            "token_required": request.app.state.token_required,
        },
    )


@router.get("/tests/{name}/{test_id:path}", response_class=HTMLResponse)
def test_page(
    request: Request, name: str, test_id: str, jobs: Jobs, branch: str | None = None, python: str | None = None
) -> Response:
    """A test's outcome and duration over the newest 100 jobs of a branch (of one Python's
    variants, with ``?python=``)."""
    branch = branch[:255] if branch else None
    everywhere = jobs.insight.test_runs(name, test_id[:2000], branch, limit=100)
    pythons = sorted({r["python"] for r in everywhere if r["python"]})
    chosen = jobs.insight.test_runs(name, test_id[:2000], branch, 100, python[:20]) if python else everywhere
    runs = list(reversed(chosen))
    bars = [
        Bar(f"{r['commit'][:10]}: {r['outcome']}, {r['seconds']:.3f} s", r["seconds"], r["outcome"], r["commit"][:7])
        for r in runs
    ]
    failed = sum(1 for r in runs if r["outcome"] in ("failed", "error"))
    summary = (
        f"duration of {test_id[:200]} in its last {len(runs)} runs{' on ' + branch if branch else ''}"
        f"{' on Python ' + python[:20] if python else ''}, "
        f"oldest first; {failed} failed"
    )
    return TEMPLATES.TemplateResponse(
        request,
        "test.html",
        {
            "repository": name,
            "test_id": test_id,
            "branch": branch,
            "python": python,
            "pythons": pythons,
            "runs": runs,
            "failed": failed,
            "chart": Markup(bar_chart(bars, summary)),
            "token_required": request.app.state.token_required,
        },
    )


def badge_svg(message: str, colour: str, label: str = "tests") -> bytes:
    left, right = 6 * len(label) + 12, 6 * len(message) + 12
    width = left + right
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{label}: {message}">'
        f"<title>{label}: {message}</title>"
        f'<rect width="{left}" height="20" fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2}" y="14">{label}</text><text x="{left + right / 2}" y="14">{message}</text></g></svg>'
    ).encode()
