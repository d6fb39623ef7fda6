"""multiprocessing.RawArray summed by one process and by Pool.map over
disjoint slices (fork context: the workers inherit the array), timed as
bench/cases/array.lua times pcrun.array. (Not named array.py: that would
shadow the standard module.)"""
import array
import multiprocessing

from common import emit, now, params, samples

P = params(reps=1, n=100000000, py_n=10000000, workers=2)
ctx = multiprocessing.get_context("fork")
ARR = ctx.RawArray("d", P.py_n)
ONES = array.array("d", [1.0]) * P.py_n
memoryview(ARR).cast("B")[:] = memoryview(ONES).cast("B")
del ONES


def slice_sum(bounds):
    lo, hi = bounds
    return sum(memoryview(ARR).cast("B").cast("d")[lo:hi])


def serial():
    t0 = now()
    s = slice_sum((0, P.py_n))
    dt = now() - t0
    assert s == P.py_n
    return P.py_n * 8 / dt / 1e9


POOL = ctx.Pool(P.workers)
POOL.map(abs, range(4))


def parallel():
    n, w = P.py_n, P.workers
    parts = [(n * k // w, n * (k + 1) // w) for k in range(w)]
    t0 = now()
    s = sum(POOL.map(slice_sum, parts, 1))
    dt = now() - t0
    assert s == n
    return n * 8 / dt / 1e9


def main():
    m = samples(P.reps, {"serial": serial, "parallel": parallel})
    POOL.terminate()
    emit(serial=m["serial"], parallel=m["parallel"])


main()
