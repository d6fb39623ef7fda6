"""Shared by the bench/py scripts: parameters from bench/run.lua, samples,
and the "key value value ..." lines run.lua reads (it takes the medians)."""
import argparse
import platform
import time

now = time.perf_counter  # monotonic, as pcrun.core.now


def params(**defaults):
    """--name value for each default (run.lua passes every one); the
    defaults only serve a script run by hand."""
    ap = argparse.ArgumentParser()
    for name, value in defaults.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value),
                        default=value)
    return ap.parse_args()


def samples(reps, fns):
    """Run each function of fns (name -> function returning one figure)
    reps times, interleaved as run.lua does; name -> list of figures."""
    out = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in sorted(fns.items()):
            out[name].append(fn())
    return out


def emit(**figures):
    """One line per figure: its name, then its samples (a list) or value."""
    print("python", platform.python_version())
    for key, value in figures.items():
        values = value if isinstance(value, list) else [value]
        print(key, " ".join(repr(float(v)) for v in values))
