"""multiprocessing.Queue between forked producers and consumers, timed as
bench/cases/queue.lua times pcrun.queue. (Not named queue.py: that would
shadow the standard module.)"""
import gc
import multiprocessing
import time

from common import emit, now, params, samples

P = params(reps=1, ints=1000000, tables=10000, floats=100, procs=4)
ctx = multiprocessing.get_context("fork")


def floats():
    return [i * 0.25 for i in range(1, P.floats + 1)]


def transfer(nprod, ncons, per, item):
    """Seconds from go to the last item taken (see queue.lua)."""
    q, go, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    total, ps = nprod * per, []

    def producer():
        v = item()
        go.wait()
        for _ in range(per):
            q.put(v)

    def consumer(share):
        go.wait()
        last = None
        for _ in range(share):
            last = q.get()
        done.put(last is not None)

    for _ in range(nprod):
        ps.append(ctx.Process(target=producer))
    if ncons > 1:
        for _ in range(ncons):
            ps.append(ctx.Process(target=consumer, args=(total // ncons,)))
    for p in ps:
        p.start()
    gc.collect()
    time.sleep(0.05)
    t0 = now()
    go.set()
    if ncons > 1:
        for _ in range(ncons):
            assert done.get()
    else:
        last = None
        for _ in range(total):
            last = q.get()
        assert last is not None
    dt = now() - t0
    for p in ps:
        p.join()
    return dt


def main():
    nbytes = P.tables * P.floats * 8

    def ints():
        return P.ints / transfer(1, 1, P.ints, lambda: 7)

    def tab11():
        return nbytes / transfer(1, 1, P.tables, floats) / 1e6

    def tabnn():
        return nbytes / transfer(P.procs, P.procs, P.tables // P.procs,
                                 floats) / 1e6

    m = samples(P.reps, {"ints": ints, "tab11": tab11, "tabnn": tabnn})
    emit(ints=m["ints"], tab11=m["tab11"], tabnn=m["tabnn"])


main()
