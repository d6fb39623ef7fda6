"""pickle dumps + loads of the records bench/cases/serializer.lua uses,
per record and as one list. The GC stays on; a full collect precedes each
repetition."""
import gc
import pickle

from common import emit, now, params, samples

P = params(records=10000, passes=10, reps=1)


def records(n):
    return [{"id": i, "x": i * 0.37 + 0.5, "name": f"rec-{i:016d}",
             "list": [i * 10 + k for k in range(1, 11)],
             "nested": {"a": [1, 2], "b": "xy"}}
            for i in range(1, n + 1)]


def per_record(recs):
    dumps, loads = pickle.dumps, pickle.loads
    gc.collect()
    total, t0 = 0, now()
    for _ in range(P.passes):
        for r in recs:
            total += loads(dumps(r))["id"]
    dt = now() - t0
    assert total == P.passes * len(recs) * (len(recs) + 1) // 2
    return P.passes * len(recs) / dt


def whole(recs):
    gc.collect()
    t0 = now()
    for _ in range(P.passes):
        assert len(pickle.loads(pickle.dumps(recs))) == len(recs)
    return P.passes * len(recs) / (now() - t0)


def main():
    recs = records(P.records)
    assert pickle.loads(pickle.dumps(recs[0])) == recs[0]
    size = sum(len(pickle.dumps(r)) for r in recs) / len(recs)
    m = samples(P.reps, {"rec": lambda: per_record(recs),
                         "list": lambda: whole(recs)})
    emit(rec_rate=m["rec"], list_rate=m["list"], bytes_per_record=size)


main()
