"""multiprocessing.Lock and Event (fork context), timed as
bench/cases/sync.lua times pcrun's lock and event."""
import multiprocessing
import time

from common import emit, now, params, samples

P = params(reps=1, pairs=1000000, cpairs=200000, pings=5000)
ctx = multiprocessing.get_context("fork")


def uncontended():
    lock = ctx.Lock()
    t0 = now()
    for _ in range(P.pairs):
        lock.acquire()
        lock.release()
    return (now() - t0) / P.pairs * 1e9


def contended():
    lock, go = ctx.Lock(), ctx.Event()

    def work():
        for _ in range(P.cpairs):
            lock.acquire()
            lock.release()

    def child():
        go.wait()
        work()

    p = ctx.Process(target=child)
    p.start()
    time.sleep(0.05)
    t0 = now()
    go.set()
    work()
    p.join()
    return (now() - t0) / (2 * P.cpairs) * 1e9


def latency():
    ping, pong = ctx.Event(), ctx.Event()

    def child():
        for _ in range(P.pings):
            ping.wait()
            ping.clear()
            pong.set()

    p = ctx.Process(target=child)
    p.start()
    t0 = now()
    for _ in range(P.pings):
        ping.set()
        pong.wait()
        pong.clear()
    dt = now() - t0
    p.join()
    return dt / P.pings / 2 * 1e6


def main():
    m = samples(P.reps, {"unc": uncontended, "con": contended,
                         "lat": latency})
    emit(unc=m["unc"], con=m["con"], lat=m["lat"])


main()
