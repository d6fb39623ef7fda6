"""Start + join of a multiprocessing Process (fork context) running an
empty function, one at a time, as bench/cases/process.lua does."""
import gc
import multiprocessing

from common import emit, now, params, samples

P = params(reps=40, warmup=10)
ctx = multiprocessing.get_context("fork")


def empty():
    pass


def start_join():
    t0 = now()
    p = ctx.Process(target=empty)
    p.start()
    p.join()
    return (now() - t0) * 1e3


def main():
    for _ in range(P.warmup):
        start_join()
    gc.collect()
    emit(start_join_ms=samples(P.reps, {"start": start_join})["start"])


main()
