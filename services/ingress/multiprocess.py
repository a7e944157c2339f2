"""``switchboard ingress --workers N``: N processes serving one port via SO_REUSEPORT.

Each process is a full, stateless ingress; the kernel spreads connections. Metrics
are aggregated through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time

from shared.settings import Settings


def _serve(settings: Settings, host: str, port: int) -> None:
    from services.ingress.app import run

    run(settings, host=host, port=port, reuse_port=True)


def run_workers(settings: Settings, *, host: str, port: int, workers: int) -> int:
    """Start ``workers`` processes, restart any that die, stop all on SIGTERM/SIGINT."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="switchboard-metrics-")
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_serve, args=(settings, host, port), daemon=False)
        proc.start()
        return proc

    procs = [start() for _ in range(workers)]
    while not stopping:
        time.sleep(0.5)
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid)
                procs[i] = start()
    for proc in procs:
        if proc.is_alive() and proc.pid:
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_timeout_s
    for proc in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
    return 0
