"""The hardware class of a node: what a wall-clock budget's results depend on.

Under a wall-clock budget (autoresearch's `TIME_BUDGET = 300`) the hardware decides how much training
fits, so the class joins the protocol id: only nodes of one class compare results. A GPU node's class
names the accelerator, model and count (`NVIDIA H100 80GB HBM3 x1`), from `nvidia-smi`, else from torch
if the node's interpreter has a CUDA build; `CUDA_VISIBLE_DEVICES` narrows it as it narrows the run. A
CPU node's class is the CPU model and core count, as before, so CPU protocol ids do not change.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

NVIDIA_SMI_TIMEOUT_S = 10.0


def cpu_string() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"[:200]


def visible_devices(devices: list[tuple[str, str, str]], cuda_visible: str | None) -> list[tuple[str, str, str]]:
    """The (index, uuid, name) devices that `CUDA_VISIBLE_DEVICES` leaves visible, in its order.

    Unset: all of them. Entries are indices or (prefixes of) UUIDs; CUDA stops at the first invalid one."""
    if cuda_visible is None:
        return list(devices)
    out: list[tuple[str, str, str]] = []
    for entry in (e.strip() for e in cuda_visible.split(",")):
        match = [d for d in devices if entry and (d[0] == entry or d[1].startswith(entry))]
        if not match:
            break
        out.append(match[0])
    return out


def visible(devices: list[tuple[str, str, str]], cuda_visible: str | None) -> list[str]:
    """Names of the devices `CUDA_VISIBLE_DEVICES` leaves visible (see `visible_devices`)."""
    return [name for _, _, name in visible_devices(devices, cuda_visible)]


def nvidia_gpus() -> list[tuple[str, str, str]] | None:
    """(index, uuid, name) of every GPU nvidia-smi reports; None without nvidia-smi or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[2]:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def torch_gpus() -> list[str]:
    """Only where a driver is present (importing torch costs a daemon ~300 MB and a second or two)."""
    if not os.path.exists("/dev/nvidia0"):
        return []
    try:
        import torch
    except ImportError:
        return []
    try:
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA setup means: no usable GPU
        return []


def describe_gpus(names: list[str]) -> str:
    """`NVIDIA H100 80GB HBM3 x2`; mixed models: `A x1 + B x1` (sorted, so order does not matter)."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return " + ".join(f"{n} x{c}" for n, c in sorted(counts.items()))[:200]


def hardware_class(device: str = "auto") -> str:
    """The class for this node's runs: its GPUs unless `device` is cpu or none is visible, else its CPU."""
    if device != "cpu":
        rows = nvidia_gpus()
        names = visible(rows, os.environ.get("CUDA_VISIBLE_DEVICES")) if rows is not None else torch_gpus()
        if names:
            return describe_gpus(names)
    return cpu_string()
