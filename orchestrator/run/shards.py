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

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, BinaryIO

from orchestrator.backends.base import LABEL_SHARD, ContainerState, container_name
from orchestrator.environment.setup import Setup
from orchestrator.errors import InfrastructureError
from orchestrator.faults import crash_point
from orchestrator.logcapture import CappedLog
from orchestrator.models import Job, JobStatus, transition, utcnow
from orchestrator.run.attempt import Attempt, remove_leftovers
from orchestrator.run.context import Context
from orchestrator.run.watch import Watch
from orchestrator.sharding import PLAN_FILE, Plan, merge_reports, mismatch, summary, worst
from orchestrator.verdict import flaky, judge, parse_junit
from orchestrator.workspace import Workspace, remove_tree
from runner_image import orchestrator_protocol as protocol

log = logging.getLogger("orchestrator.run")


class Shard:
    """Shard ``index`` of a split attempt: its own workspace and container, run again
    alone when the infrastructure ends it."""

    def __init__(self, attempt: "ShardedAttempt", index: int):
        self.attempt, self.index = attempt, index
        self.ws = Workspace(attempt.ws.root / f"shard-{index}")
        self.containers: list[str] = []     # every container it had (removed at the end)
        self.capped: CappedLog | None = None
        self.junit: bytes | None = None
        self.status, self.message = JobStatus.ERROR, "did not run"
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
        if self.containers:   # the one before, if the engine still has it: the new one takes its name
            ctx.backend.destroy(self.containers[-1])
        remove_tree(self.ws.root)
        self.ws.src.mkdir(parents=True)
        self.ws.out.mkdir()
        ctx.mirrors[job.repository].checkout(job.commit, self.ws.src)
        (self.ws.out / PLAN_FILE).write_bytes(plan.document())
        ctx.workspaces.hand_over(self.ws)
        spec = attempt._spec(self.ws, attempt.runs_in.image, attempt.runs_in.variables)
        spec = dataclasses.replace(
            spec, name=container_name(ctx.instance, job.id, job.attempts, self.index),
            labels={**spec.labels, LABEL_SHARD: f"{self.index}/{plan.count}"},
            environment={**spec.environment, **plan.environment(self.index), protocol.SHARD_TRY: str(self.tries)})
        container_id = ctx.backend.prepare(spec)
        self.containers.append(container_id)
        state = ctx.backend.start(container_id)
        self.started = state.started_at or utcnow()
        if self.capped is not None:
            self.capped.close()
        self.capped = CappedLog(self.ws.spool, ctx.config.runner.max_log_bytes)
        final, killed = Watch(ctx, job, container_id, self.capped, [self.ws.src, self.ws.out]).until_exit(self.started)
        self.junit = ctx.backend.report(container_id, self.ws.out)
        self.status, self.message = judge(ctx.config.runner, final, killed, self.junit, self.capped.head(),
                                          self.attempt._reruns())
        self.final = final

    def summary(self) -> dict[str, Any]:
        tests = parse_junit(self.junit, self.attempt._reruns()) if self.junit else None
        final, started = self.final, self.started
        duration = round((final.finished_at - started).total_seconds(), 3) \
            if final is not None and final.finished_at and started else None
        return summary(self.index, self.status, message=self.message, exit_code=final.exit_code if final else None,
                       duration_s=duration, tests=tests.__dict__ if tests else None,
                       container=self.containers[-1] if self.containers else None,
                       node=final.node if final else None, attempts=self.tries)

    def write_log(self, out: BinaryIO) -> None:
        if self.capped is not None:
            self.capped.write_to(out)
        else:
            out.write(f"[orchestrator: {self.message}]\n".encode())

    def close(self) -> None:
        if self.capped is not None:
            self.capped.close()


class ShardedAttempt(Attempt):
    """Runs the current attempt of ``job`` as ``plan.count`` shards (never warm, never adopted)."""

    def __init__(self, ctx: Context, job: Job, plan: Plan):
        super().__init__(ctx, job)
        self.plan = plan
        self.shards: list[Shard] = []
        self.runs_in: Setup | None = None

    def _run(self) -> Job:
        crash_point("job-claimed")
        _, self.runs_in = self._checkout_and_environment()   # each shard then checks out its own
        image = self.runs_in.image
        self.shards = [Shard(self, k) for k in range(1, self.plan.count + 1)]
        self._record(image_tag=image.tag, image_id=image.id, environment=self.runs_in.document, message=None,
                     shards=tuple(summary(s.index, JobStatus.RUNNING) for s in self.shards))
        log.info("job %s: %s split across %d containers", self.job.id, self.job.commit[:12], self.plan.count)
        try:
            with self._phase("run"), ThreadPoolExecutor(self.plan.count, thread_name_prefix="shard") as pool:
                for future in [pool.submit(shard.run) for shard in self.shards]:
                    future.result()
            with self._phase("collect"):
                junit = merge_reports([s.junit for s in self.shards])
                done = self._verdict_of_shards(junit)
                done, staged = self._artifacts(done, [(s.ws.src, f"shard-{s.index}") for s in self.shards])
            self._save(done, junit, self._combined_log, staged, shard_logs=[s.write_log for s in self.shards])
        finally:
            for shard in self.shards:
                shard.close()
        return self._finish(done)

    def _verdict_of_shards(self, junit: bytes | None) -> Job:
        status = worst([s.status for s in self.shards])
        first = next(s for s in self.shards if s.status is status)
        message = f"{first.name}: {first.message}" if first.message else None
        if status is not JobStatus.CANCELLED and (why := mismatch([s.junit for s in self.shards])):
            status, message = JobStatus.ERROR, why
        ends = [s.final.finished_at for s in self.shards if s.final is not None and s.final.finished_at]
        return transition(
            self.job, status, utcnow(), exit_code=first.final.exit_code if first.final else None, message=message,
            tests=parse_junit(junit, self._reruns()) if junit else None, flaky=tuple(flaky(junit, self._reruns())),
            log_truncated=any(s.capped is not None and s.capped.truncated for s in self.shards),
            finished_at=max(ends) if ends else utcnow(), shards=tuple(s.summary() for s in self.shards))

    def _combined_log(self, out: BinaryIO) -> None:
        for shard in self.shards:
            out.write(f"===== {shard.name}: {shard.status.value} =====\n".encode())
            shard.write_log(out)
            out.write(b"\n")

    def _clean_up(self) -> None:
        for shard in self.shards:
            for container_id in shard.containers:
                self.ctx.cleaner.submit(remove_leftovers, self.ctx, container_id, None, self.job.id)
        super()._clean_up()
