"""gunicorn config used by ``benchmarks/chain.py --profile``: cProfile each sync worker, dump at exit.

Profiles land in $GB_BENCH_PROFILE_DIR as <config>-<hop>-<pid>.prof (read them with pstats or
``python benchmarks/chain.py --show-profile DIR``).
"""
import cProfile
import os

_prof = None


def post_fork(server, worker):  # runs in the worker, which serves requests on its main thread
    global _prof
    if os.environ.get("GB_BENCH_PROFILE_DIR"):
        _prof = cProfile.Profile()
        _prof.enable()


def worker_exit(server, worker):
    if _prof is not None:
        _prof.disable()
        d = os.environ["GB_BENCH_PROFILE_DIR"]
        name = os.environ.get("GB_BENCH_PROFILE_NAME", "worker")
        _prof.dump_stats(os.path.join(d, f"{name}-{os.getpid()}.prof"))
