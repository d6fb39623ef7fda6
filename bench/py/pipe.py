"""multiprocessing.Pipe between a forked child that sends and the parent
that receives, timed as bench/cases/pipe.lua times pcrun's pipe."""
import gc
import multiprocessing

from common import emit, now, params, samples

P = params(reps=1, msgs=300000, msg_size=64, big_mib=64, big_count=8)
ctx = multiprocessing.get_context("fork")


def transfer(n, payload, send, recv):
    """Seconds from "go" to the last of n messages received."""
    a, b = ctx.Pipe()

    def child():
        b.send(b"ready")
        b.recv()
        put = getattr(b, send)
        for _ in range(n):
            put(payload)

    p = ctx.Process(target=child)
    p.start()
    assert a.recv() == b"ready"
    gc.collect()
    a.send(b"go")
    get = getattr(a, recv)
    t0 = now()
    for _ in range(n):
        last = get()
    dt = now() - t0
    assert len(last) == len(payload)
    p.join()
    assert p.exitcode == 0
    a.close()
    b.close()
    return dt


def main():
    small = b"m" * P.msg_size
    big = b"b" * (P.big_mib << 20)

    def msg():
        return P.msgs / transfer(P.msgs, small, "send", "recv")

    def raw():
        return P.msgs / transfer(P.msgs, small, "send_bytes", "recv_bytes")

    def bulk():
        dt = transfer(P.big_count, big, "send_bytes", "recv_bytes")
        return P.big_count * len(big) / dt / 1e9

    msg()  # untimed once, as pipe.lua does: first-touch memory is slow
    bulk()
    m = samples(P.reps, {"msg": msg, "raw": raw, "big": bulk})
    emit(msg_rate=m["msg"], raw_rate=m["raw"], big_gbps=m["big"])


main()
