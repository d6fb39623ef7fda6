"""The cluster group's Python side: mpi4py.futures on the same workloads
as bench/cluster_job.lua. Run as
  mpirun -n W+1 python3 -m mpi4py.futures bench/py/cluster.py ...
(one rank is the master, W are workers), or, for the one 64 MiB message,
  mpirun -n 2 python3 bench/py/cluster.py --part msg ..."""
import math
import sys
import time

from common import params, emit, now


def spin(s):
    t = now() + s
    while now() < t:
        pass
    return s


def double(x):
    return x * 2


def echo(s):
    return s


def expo(n, ms, seed):
    t, x = [], seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) % 2147483648
        t.append(-math.log(1 - x / 2147483648) * ms / 1000)
    return t


def message(p):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    data = bytearray(b"x" * (p.msg_mib << 20))
    ack = bytearray(1)
    times = []
    for _ in range(9):  # as bench/cluster_job.lua: a median of 9
        comm.Barrier()
        t0 = now()
        if comm.rank == 0:
            comm.Send(data, dest=1)
            comm.Recv(ack, source=1)
        elif comm.rank == 1:
            comm.Recv(data, source=0)
            comm.Send(ack, dest=0)
        times.append(now() - t0)
    if comm.rank == 0:
        emit(msg=times)


def main():
    p = params(part="pool", workers=2, reps=3, n5=200, ms=5.0, nexp=200, tiny=200000,
               big_n=20, msg_mib=64)
    if p.part == "msg":
        return message(p)
    from mpi4py.futures import MPIPoolExecutor
    five = [p.ms / 1000] * p.n5
    ex = expo(p.nexp, p.ms, 20261201)
    tiny = list(range(1, p.tiny + 1))
    big = b"y" * (1 << 20)
    bigs = [big + str(i).encode() for i in range(p.big_n)]
    arg64 = b"z" * (p.msg_mib << 20)
    figs = {"five": [], "expo": [], "tiny": [], "big": [], "arg64": []}
    with MPIPoolExecutor() as ex_:
        list(ex_.map(spin, [0.001] * 4))

        def time_(fn):
            t0 = now()
            fn()
            return now() - t0
        for _ in range(p.reps):
            figs["arg64"].append(time_(lambda: list(ex_.map(len, [arg64, arg64]))))
            figs["five"].append(time_(lambda: list(ex_.map(spin, five))))
            figs["expo"].append(time_(lambda: list(ex_.map(spin, ex))))
            # chunksize 1 (the default) takes a minute here: give it
            # multiprocessing's default, n / (4 * workers)
            cs = -(-len(tiny) // (4 * p.workers))
            figs["tiny"].append(time_(lambda: list(ex_.map(double, tiny,
                                                            chunksize=cs))))
            figs["big"].append(time_(lambda: list(ex_.map(echo, bigs))))
    emit(**figs)


if __name__ == "__main__":
    main()
