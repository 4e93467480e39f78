"""One attempt of a commit whose suite is split (``repositories[].shards``): N containers
at once, each with a checkout of its own and its share of the tests, then one result.

Each shard is watched as a job's container is (run/watch.py: the timeout, a cancel, the
disk limit, the engine going away). A shard that the infrastructure ended (its container
gone, the engine away past its grace) runs again alone, up to ``retries`` times, while the
others go on; what the tests did is never retried. The commit's status is the worst of
the shards', its JUnit report their reports merged, its ``output.log`` their logs one
after the other, and each shard's log is kept as ``output.<k>.log``.

A split attempt is not re-attached after a restart: recovery removes its containers and
re-queues it (run/recovery.py), as it does an attempt whose container is gone.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.backends.base import ContainerState
from orchestrator.environment.setup import Setup
from orchestrator.errors import InfrastructureError, NotActive
from orchestrator.faults import crash_point
from orchestrator.models import Job, JobStatus, transition, utcnow
from orchestrator.results.logcapture import CappedLog
from orchestrator.results.report import Report, merge
from orchestrator.results.verdict import judge
from orchestrator.run import collect, conclude, steps
from orchestrator.run.context import Context
from orchestrator.run.sharding import PLAN_FILE, Plan, mismatch, summary, unrun, worst
from orchestrator.run.spec import Shard as ShardSpec
from orchestrator.run.spec import container_spec
from orchestrator.run.watch import Abandoned, Watch
from orchestrator.workspace import Workspace, make_output, remove_tree

log = logging.getLogger("orchestrator.run")


class Shard:
    """Shard ``index`` of a split attempt: its own workspace and container, run again
    alone when the infrastructure ends it."""

    def __init__(self, attempt: SplitAttempt, index: int):
        self.attempt, self.index = attempt, index
        self.ws = Workspace(attempt.ws.root / f"shard-{index}")
        self.containers: list[str] = []  # every container it had (removed at the end)
        self.capped: CappedLog | None = None
        self.report = Report(None)
        self.status: JobStatus = JobStatus.ERROR
        self.message: str | None = "did not run"
        self.final: ContainerState | None = None
        self.started: datetime | None = None
        self.tries = 0

    @property
    def name(self) -> str:
        return f"shard {self.index} of {self.attempt.plan.count}"

    def run(self) -> None:
        ctx, job = self.attempt.ctx, self.attempt.job
        while True:
            self.tries += 1
            try:
                self._once()
                return
            except InfrastructureError as exc:
                if self.tries > ctx.config.retries or ctx.abandon.is_set():
                    self.status, self.message = JobStatus.ERROR, f"gave up after {self.tries} attempts: {exc}"
                    return
                log.warning("job %s: %s: %s; running it again, alone", job.id, self.name, exc)

    def _once(self) -> None:
        attempt = self.attempt
        ctx, job, plan = attempt.ctx, attempt.job, attempt.plan
        if self.containers:  # the one before, if the engine still has it: the new one takes its name
            ctx.backend.destroy(self.containers[-1])
        remove_tree(self.ws.root)
        self.ws.src.mkdir(parents=True)
        make_output(self.ws.out)
        ctx.mirrors[job.repository].checkout(job.commit, self.ws.src)
        (self.ws.out / PLAN_FILE).write_bytes(plan.document())
        steps.write_inputs(job, self.ws.out)
        ctx.workspaces.hand_over(self.ws)
        assert attempt.runs_in is not None
        watched = [self.ws.src, self.ws.out] + ([attempt.claims] if attempt.claims else [])
        spec = container_spec(
            ctx.config.runner,
            ctx.instance,
            ctx.workspaces.container_user(),
            job,
            job.attempts,
            self.ws.src,
            self.ws.out,
            attempt.runs_in.image,
            attempt.runs_in.variables,
            shard=ShardSpec(self.index, plan.count, self.tries, attempt.claims),
        )
        container_id = steps.prepare(ctx, spec, attempt.runs_in)
        self.containers.append(container_id)
        state = ctx.backend.start(container_id)
        self.started = state.started_at or utcnow()
        if self.capped is not None:
            self.capped.close()
        self.capped = CappedLog(self.ws.spool, ctx.config.runner.max_log_bytes)
        final, killed = Watch(ctx, job, container_id, self.capped, watched).until_exit(self.started)
        self.report = Report(ctx.backend.report(container_id, self.ws.out))
        self.status, self.message = judge(
            ctx.config.runner, final, killed, self.report, self.capped.head(), collect.reruns(ctx, job.repository)
        )
        self.final = final

    def summary(self) -> dict[str, Any]:
        tests = self.report.counts(collect.reruns(self.attempt.ctx, self.attempt.job.repository))
        final, started = self.final, self.started
        duration = (
            round((final.finished_at - started).total_seconds(), 3)
            if final is not None and final.finished_at and started
            else None
        )
        return summary(
            self.index,
            self.status,
            message=self.message,
            exit_code=final.exit_code if final else None,
            duration_s=duration,
            tests=tests.__dict__ if tests else None,
            container=self.containers[-1] if self.containers else None,
            node=final.node if final else None,
            attempts=self.tries,
        )

    def write_log(self, out: BinaryIO) -> None:
        if self.capped is not None:
            self.capped.write_to(out)
        else:
            out.write(f"[orchestrator: {self.message}]\n".encode())

    def close(self) -> None:
        if self.capped is not None:
            self.capped.close()


class SplitAttempt:
    """Runs the current attempt of ``job`` as ``plan.count`` shards (never warm, never
    adopted), from the steps every attempt takes (run/steps.py, run/collect.py)."""

    def __init__(self, ctx: Context, job: Job, plan: Plan):
        self.ctx = ctx
        self.job = job
        self.plan = plan
        self.ws = ctx.workspaces.get(job.id)
        self.shards: list[Shard] = []
        self.runs_in: Setup | None = None
        self.timings = steps.Timings()
        self.claims: Path | None = None  # the shards' shared queue, where the engine can mount one folder in all

    def run(self) -> Job:
        try:
            self.job = steps.finish(self.ctx, self.job, self._run())
            self._clean_up()
            return self.job
        except (Abandoned, NotActive):
            log.info("job %s: its shards are left for the next start (or the active dispatcher)", self.job.id)
            return self.job
        except Exception as exc:
            self._clean_up_quietly()
            self.job = conclude.after(self.ctx, self.job, exc, None, self.timings)
            return self.job

    def _run(self) -> Job:
        crash_point("job-claimed")
        # for the environment; each shard then checks out its own
        self.ws, self.runs_in = steps.checkout_and_environment(
            self.ctx, self.job, self.timings, self._building_environment
        )
        image = self.runs_in.image
        if self.plan.queue and self.ctx.backend.shares_workspace:  # a Swarm's tasks share no folder
            self.claims = self.ws.root / "claims"
            self.claims.mkdir()
            self.ctx.workspaces.hand_over_folder(self.claims)
        self.shards = [Shard(self, k) for k in range(1, self.plan.count + 1)]
        self._record(
            image_tag=image.tag,
            image_id=image.id,
            environment=self.runs_in.document,
            message=None,
            shards=tuple(summary(s.index, JobStatus.RUNNING) for s in self.shards),
        )
        log.info("job %s: %s split across %d containers", self.job.id, self.job.commit[:12], self.plan.count)
        try:
            with self.timings.measure("run"), ThreadPoolExecutor(self.plan.count, thread_name_prefix="shard") as pool:
                for future in [pool.submit(shard.run) for shard in self.shards]:
                    future.result()
            with self.timings.measure("collect"):
                report = merge([s.report for s in self.shards])
                done = self._verdict(report)
                done, staged = collect.with_artifacts(
                    self.ctx, done, self.ws.root, [(s.ws.src, f"shard-{s.index}") for s in self.shards]
                )
            collect.save(
                self.ctx,
                done,
                report,
                self._combined_log,
                self.timings,
                staged,
                shard_logs=[s.write_log for s in self.shards],
            )
        finally:
            for shard in self.shards:
                shard.close()
        return done

    def _building_environment(self, stage: str) -> None:
        log.info("job %s: %s", self.job.id, stage)
        self._record(message=stage)

    def _record(self, **facts: Any) -> None:
        self.job = steps.record(self.ctx, self.job, **facts)

    def _verdict(self, report: Report) -> Job:
        """The worst shard's status is the commit's; shards that collected different tests
        make it ``error``; the counts are the merged report's."""
        status = worst([s.status for s in self.shards])
        first = next(s for s in self.shards if s.status is status)
        message = f"{first.name}: {first.message}" if first.message else None
        reports = [s.report for s in self.shards]
        if status is not JobStatus.CANCELLED and (why := mismatch(reports) or unrun(reports)):
            status, message = JobStatus.ERROR, why
        ends = [s.final.finished_at for s in self.shards if s.final is not None and s.final.finished_at]
        counted = collect.reruns(self.ctx, self.job.repository)
        done = transition(
            self.job,
            status,
            utcnow(),
            exit_code=first.final.exit_code if first.final else None,
            message=message,
            tests=report.counts(counted),
            flaky=tuple(report.flaky(counted)),
            log_truncated=any(s.capped is not None and s.capped.truncated for s in self.shards),
            finished_at=max(ends) if ends else utcnow(),
            shards=tuple(s.summary() for s in self.shards),
        )
        return collect.settled(self.ctx, done, report)

    def _combined_log(self, out: BinaryIO) -> None:
        for shard in self.shards:
            out.write(f"===== {shard.name}: {shard.status.value} =====\n".encode())
            shard.write_log(out)
            out.write(b"\n")

    def _clean_up(self) -> None:
        steps.clean_up(self.ctx, self.job.id, [c for shard in self.shards for c in shard.containers])

    def _clean_up_quietly(self) -> None:
        steps.clean_up_quietly(self.ctx, self.job.id, [c for shard in self.shards for c in shard.containers])
