"""multiprocessing.Pool and ProcessPoolExecutor (fork context), timed as
bench/cases/pool.lua times pcrun.pool; --part picks the part, --workers is
pcrun.cpu_count() (the same pool size on both sides)."""
import concurrent.futures
import gc
import multiprocessing
import sys

from common import emit, now, params, samples

P = params(part="map", workers=2, reps=1,
           # create: no parameters but reps
           rt=20000, py_rt=5000, py_apply_rt=2000, warmup=1000,
           items=1000000, cs1_items=1000000, py_cs1_items=100000,
           n=20000, scale="",
           tasks=200, alpha=1.5, seconds=4.0, seed=1, durations="",
           size=800, py_size=400, iters=200)
ctx = multiprocessing.get_context("fork")
N = P.workers


def double(x):
    return x * 2


def create():
    """Pool(N) created and the first result back, ms; the pool is
    terminated outside the timing, as pool.lua does."""
    gc.collect()
    t0 = now()
    pool = ctx.Pool(N)
    v = pool.apply_async(double, (21,)).get()
    dt = now() - t0
    assert v == 42
    pool.terminate()
    pool.join()
    return dt * 1e3


def part_create():
    for _ in range(3):  # untimed, as pool.lua does
        create()
    emit(create_ms=samples(P.reps, {"create": create})["create"])


def part_roundtrip():
    def ppe_us(ex, n):
        gc.collect()
        t0 = now()
        for i in range(n):
            if ex.submit(double, i).result() != 2 * i:
                raise RuntimeError("wrong result")
        return (now() - t0) / n * 1e6

    def apply_us(pool, n):
        gc.collect()
        t0 = now()
        for i in range(n):
            if pool.apply_async(double, (i,)).get() != 2 * i:
                raise RuntimeError("wrong result")
        return (now() - t0) / n * 1e6

    with concurrent.futures.ProcessPoolExecutor(N, mp_context=ctx) as ex, \
            ctx.Pool(N) as pool:
        ppe_us(ex, 200)  # untimed warm-up
        apply_us(pool, 200)
        m = samples(P.reps, {"ppe": lambda: ppe_us(ex, P.py_rt),
                             "apply": lambda: apply_us(pool, P.py_apply_rt)})
    emit(ppe_us=m["ppe"], apply_us=m["apply"])


def part_map():
    def rate(pool, lst, chunksize=None):
        gc.collect()
        t0 = now()
        res = pool.map(double, lst, chunksize)
        dt = now() - t0
        if len(res) != len(lst) or res[-1] != 2 * lst[-1]:
            raise RuntimeError("wrong map result")
        return len(lst) / dt

    lst = list(range(1, P.items + 1))
    cs1 = list(range(1, P.py_cs1_items + 1))
    with ctx.Pool(N) as pool:
        rate(pool, lst)  # untimed, as pool.lua does
        m = samples(P.reps, {"default": lambda: rate(pool, lst),
                             "cs1": lambda: rate(pool, cs1, 1)})
    emit(map_rate=m["default"], cs1_rate=m["cs1"])


def part_bulk():
    """n tasks submitted, then collected as they complete (futures/s)."""
    def apply_rate(pool, n):
        gc.collect()
        t0 = now()
        rs = [pool.apply_async(double, (i,)) for i in range(1, n + 1)]
        total = sum(r.get() for r in rs)
        dt = now() - t0
        if total != n * (n + 1):
            raise RuntimeError("wrong bulk result")
        return n / dt

    def ppe_rate(ex, n):
        gc.collect()
        t0 = now()
        fs = [ex.submit(double, i) for i in range(1, n + 1)]
        total = sum(f.result()
                    for f in concurrent.futures.as_completed(fs))
        dt = now() - t0
        if total != n * (n + 1):
            raise RuntimeError("wrong bulk result")
        return n / dt

    with concurrent.futures.ProcessPoolExecutor(N, mp_context=ctx) as ex, \
            ctx.Pool(N) as pool:
        apply_rate(pool, 1000)  # untimed warm-up, as pool.lua does
        ppe_rate(ex, 1000)
        m = samples(P.reps, {"apply": lambda: apply_rate(pool, P.n),
                             "ppe": lambda: ppe_rate(ex, P.n)})
    emit(apply_rate=m["apply"], ppe_rate=m["ppe"])


def busy(d):
    """Busy-waits d seconds: CPU work, not a sleep."""
    t = now() + d
    while now() < t:
        pass
    return d


def part_tail():
    if not P.durations:
        sys.exit("pool.py --part tail: --durations FILE (pool.lua writes it)")
    with open(P.durations) as f:
        durations = [float(line) for line in f if line.strip()]
    ideal = sum(durations) / N

    def tail():
        gc.collect()
        t0 = now()
        pool.map(busy, durations)
        return (now() - t0) / ideal

    with ctx.Pool(N) as pool:
        pool.map(busy, [0.001] * N)
        m = samples(P.reps, {"tail": tail})
    emit(tail_ratio=m["tail"])


def row(y):
    """Escape counts of row y of a py_size square, summed."""
    size, iters = P.py_size, P.iters
    ci = 2.0 * y / size - 1.0
    total = 0
    for x in range(size):
        cr = 2.5 * x / size - 2.0
        zr = zi = 0.0
        n = 0
        while n < iters and zr * zr + zi * zi <= 4.0:
            zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
            n += 1
        total += n
    return total


def part_mandel():
    ys = list(range(P.py_size))

    def speedup():
        gc.collect()
        t0 = now()
        serial = [row(y) for y in ys]
        ts = now() - t0
        gc.collect()
        t0 = now()
        got = pool.map(row, ys)
        tp = now() - t0
        if sum(got) != sum(serial):
            raise RuntimeError("mandelbrot: wrong checksum")
        return ts / tp

    with ctx.Pool(N) as pool:
        m = samples(P.reps, {"mandel": speedup})
    emit(mandel_speedup=m["mandel"])


PARTS = {"create": part_create, "roundtrip": part_roundtrip, "map": part_map,
         "bulk": part_bulk, "tail": part_tail, "mandel": part_mandel}

if __name__ == "__main__":
    PARTS[P.part]()
