"""Child processes of the DBOS comparison: ``python -m benchmarks._child MODE DIR ARGS``.

Modes:
  res-gen DIR K POINT     record a resumable run of K completed steps, then die (os._exit)
  res-resume DIR K POINT  resume it; print the wall time when step K (the first new one) runs
  dbos-gen DIR K          record a DBOS workflow of K completed steps, then die
  dbos-resume DIR K       launch DBOS; its recovery replays the workflow; print as above
  overhead DIR N R W      per-step cost in one process: plain, @checkpoint, durable, @DBOS.step

Every mode prints one JSON line on stdout. The module imports only what its mode needs,
so a child's start-up time is that of the library it measures.
"""

from __future__ import annotations

import json
import os
import sys
import time

T_START = time.time()
PAGE = 100  # with POINT=1, the job declares a resume point every PAGE steps
BODY: list[float] = []  # wall time at which the job or workflow body first started


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def resumable_child(mode: str, directory: str, k: int, point: bool) -> None:
    t0 = time.time()
    import resumable
    from resumable import FileStore, checkpoint, restart_with

    imported = time.time()

    @checkpoint(name="bench.step")
    def step(i: int) -> None:
        if i >= k:
            if mode == "res-gen":
                resumable.flush()
                _emit(done=k)
            else:
                _emit(first_new=time.time(), started=T_START, imported=imported - t0, body=BODY[0])
            os._exit(0)
        return

    @resumable.resumable(key="sub-{k}-{point}", store=FileStore(directory), flush_interval=1.0)
    def job(k: int, point: bool, start: int = 0) -> None:
        BODY.append(time.time())
        for i in range(start, k + 1):
            if point and i % PAGE == 0 and i != start:
                restart_with(start=i)
            step(i)

    job(k, point)
    raise SystemExit("the job ended without reaching its step k")


def dbos_child(mode: str, directory: str, k: int) -> None:
    t0 = time.time()
    from dbos import DBOS, SetWorkflowID

    imported = time.time()
    if mode == "dbos-gen":
        # Recording only: skip SQLite's fsyncs so that 10^4 steps take seconds, not a
        # minute. The database it leaves is the same; recovery runs with the defaults.
        import sqlalchemy as sa

        @sa.event.listens_for(sa.Engine, "connect")
        def _no_sync(dbapi_conn: object, record: object) -> None:
            dbapi_conn.execute("PRAGMA synchronous=OFF")  # type: ignore[attr-defined]

    DBOS(
        config={
            "name": "resumable-bench",
            "system_database_url": f"sqlite:///{directory}/dbos.sqlite",
            "log_level": "ERROR",
        }
    )

    @DBOS.step(name="bench.step")
    def step(i: int) -> None:
        if i >= k:
            if mode == "dbos-gen":
                _emit(done=k)
            else:
                _emit(first_new=time.time(), started=T_START, imported=imported - t0, body=BODY[0])
            os._exit(0)
        return

    @DBOS.workflow(name="bench.workflow")
    def workflow(k: int) -> None:
        BODY.append(time.time())
        for i in range(k + 1):
            step(i)

    DBOS.launch()
    if mode == "dbos-gen":
        with SetWorkflowID("bench-workflow"):
            workflow(k)
        raise SystemExit("the workflow ended without reaching its step k")
    time.sleep(3600)  # recovery runs the workflow in DBOS's own thread
    raise SystemExit("DBOS did not recover the workflow within an hour")


def overhead_child(directory: str, n: int, repeats: int, warmup: int) -> None:
    from dbos import DBOS, SetWorkflowID

    import resumable
    from resumable import FileStore, checkpoint

    perf = time.perf_counter
    DBOS(
        config={
            "name": "resumable-bench-overhead",
            "system_database_url": f"sqlite:///{directory}/dbos-overhead.sqlite",
            "log_level": "ERROR",
        }
    )

    def plain(i: int) -> None:
        return None

    @DBOS.step(name="bench.dstep")
    def dstep(i: int) -> None:
        return None

    @DBOS.workflow(name="bench.dworkflow")
    def dworkflow(n: int) -> float:
        t = perf()
        for i in range(n):
            dstep(i)
        return perf() - t

    @checkpoint(name="bench.cstep")
    def cstep(i: int) -> None:
        return None

    @checkpoint(name="bench.durable", durable=True)
    def durable(i: int) -> None:
        return None

    store = FileStore(os.path.join(directory, "overhead-store"))

    @resumable.resumable(key="ov-{tag}", store=store, flush_interval=1.0)
    def job(tag: str, n: int, durable_steps: bool) -> float:
        f = durable if durable_steps else cstep
        t = perf()
        for i in range(n):
            f(i)
        return perf() - t

    DBOS.launch()
    out = []
    for r in range(warmup + repeats):
        t = perf()
        for i in range(n):
            plain(i)
        tp = perf() - t
        with SetWorkflowID(f"ov-{r}-{time.time_ns()}"):
            td = dworkflow(n)
        tc = job(f"c{r}-{time.time_ns()}", n, False)
        tdur = job(f"d{r}-{time.time_ns()}", n, True)
        if r >= warmup:
            out.append([tp / n, td / n, tc / n, tdur / n])
    import dbos

    _emit(per_step=out, dbos_version=dbos.__version__ if hasattr(dbos, "__version__") else None)
    DBOS.destroy()


def main() -> None:
    mode, directory, *rest = sys.argv[1:]
    if mode in ("res-gen", "res-resume"):
        resumable_child(mode, directory, int(rest[0]), rest[1] == "1")
    elif mode in ("dbos-gen", "dbos-resume"):
        dbos_child(mode, directory, int(rest[0]))
    elif mode == "overhead":
        overhead_child(directory, int(rest[0]), int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
