"""multiprocessing.Manager().dict() (fork context) for get, set and
increment by key, and mp.Value for the numeric case, timed as
bench/cases/dict.lua times pcrun.dict. (Not named dict.py, as the other
scripts here avoid module-like names.)"""
import multiprocessing

from common import emit, now, params, samples

P = params(reps=1, n=2000000, py_n=20000, keys=1000)
ctx = multiprocessing.get_context("fork")
MGR = ctx.Manager()
D = MGR.dict()
KEYS = ["k%d" % i for i in range(1, P.keys + 1)]
for i, k in enumerate(KEYS):
    D[k] = i + 1
LOCK = ctx.Lock()
VAL = ctx.Value("d", 0.0)


def get_loop(n):
    s, K = 0, P.keys
    for i in range(n):
        s += D[KEYS[i % K]]
    assert s > 0


def together(procs, body, n):
    go = ctx.Event()

    def child():
        go.wait()
        body(n)

    ps = [ctx.Process(target=child) for _ in range(procs - 1)]
    for p in ps:
        p.start()
    t0 = now()
    go.set()
    body(n)
    for p in ps:
        p.join()
    return procs * n / (now() - t0)


def get1():
    return together(1, get_loop, P.py_n)


def get2():
    return together(2, get_loop, P.py_n)


def set1():
    K = P.keys
    t0 = now()
    for i in range(P.py_n):
        D[KEYS[i % K]] = i
    return P.py_n / (now() - t0)


def inc_loop(n):
    for _ in range(n):
        with LOCK:
            D["hits"] = D["hits"] + 1


def inc2():
    D["hits"] = 0
    r = together(2, inc_loop, P.py_n // 2)
    assert D["hits"] == 2 * (P.py_n // 2)
    return r


def vinc_loop(n):
    for _ in range(n):
        with VAL.get_lock():
            VAL.value += 1


def vinc2():
    VAL.value = 0
    r = together(2, vinc_loop, P.n // 10)
    assert VAL.value == 2 * (P.n // 10)
    return r


def main():
    m = samples(P.reps, {"get1": get1, "get2": get2, "set1": set1,
                         "inc2": inc2, "vinc2": vinc2})
    emit(**m)


main()
