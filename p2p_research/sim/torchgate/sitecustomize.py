"""A machine-wide limit on concurrent trainings for `simulate --objective torch`.

The simulator puts this folder on the daemons' PYTHONPATH with P2P_SIM_TRAIN_SLOTS=<dir>:<k>. Python
imports `sitecustomize` at start-up in every process, the daemons' training children included: a
process running `train.py` blocks here until it holds one of k flock'ed slot files, which the kernel
releases when it exits (whatever way it exits). Every other process returns at once.
"""

import os
import sys


def _gate() -> None:
    spec = os.environ.get("P2P_SIM_TRAIN_SLOTS", "")
    if not spec or not sys.argv or os.path.basename(sys.argv[0] or "") != "train.py":
        return
    import fcntl
    import time

    folder, _, k = spec.rpartition(":")
    slots = max(1, int(k or 1))
    fds = [os.open(os.path.join(folder, f"slot-{i}"), os.O_RDWR | os.O_CREAT, 0o600) for i in range(slots)]
    while True:
        for i, fd in enumerate(fds):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            for j, other in enumerate(fds):
                if j != i:
                    os.close(other)
            globals()["_held"] = fd  # kept open (and locked) until the process exits
            return
        time.sleep(0.2)


try:
    _gate()
except Exception:  # noqa: BLE001 - the gate must never break a process
    pass
