"""What would make every run fail the same way, found before the first run (and by `doctor`).

autoresearch's folder on a machine without CUDA passed every doctor check; its run then crashed with
train.py's raw `ModuleNotFoundError: No module named 'kernels'` (or torch's "not compiled with CUDA"),
was retried, and left two crash rows. Three things are checked with the train command's own
interpreter, each with its fix:
- **imports**: every module train.py and prepare.py import at their top level can be found there;
- **device**: a train.py that asks for CUDA without asking whether it is there finds a CUDA device;
- **data**: the data autoresearch's prepare.py caches (`~/.cache/autoresearch`) is there.

`will_repeat` names the crash reasons of a baseline run that another try cannot change (the loop stops
research on the first one instead of retrying). The checks are pure but `check`, which runs the probe.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from p2p_research.research.io.runner import train_argv

PROBE = (
    "import importlib.util, json, sys\n"
    "missing = []\n"
    "for name in sys.argv[2:]:\n"
    "    try:\n"
    "        if importlib.util.find_spec(name) is None:\n"
    "            missing.append(name)\n"
    "    except (ImportError, ValueError):\n"
    "        missing.append(name)\n"
    "cuda = None\n"
    "if sys.argv[1] == 'cuda':  # torch is imported only to answer this (a second of CPU)\n"
    "    try:\n"
    "        import torch\n"
    "        cuda = bool(torch.cuda.is_available())\n"
    "    except Exception:\n"
    "        pass\n"
    "print(json.dumps({'missing': missing, 'cuda': cuda, 'python': sys.executable}))\n"
)

_CUDA_ASKED = re.compile(r"""torch\.device\(\s*["']cuda|device\s*=\s*["']cuda["']|\.cuda\(\)|["']cuda["']\s*\)""")
_AUTORESEARCH_CACHE = re.compile(r"""["']\.cache["']\s*,\s*["']autoresearch["']""")


@dataclass(frozen=True)
class Problem:
    what: str   # imports | device | data | interpreter
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.message}; fix: {self.fix}"


def imported_modules(sources: dict[str, bytes], local: set[str]) -> list[str]:
    """Top-level module names imported at the top level of each source (inside `try` too: a guarded
    import is still reported only if it is missing everywhere), minus the folder's own modules."""
    names: set[str] = set()
    for src in sources.values():
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Try):
                continue  # an optional import: its except branch says what happens without it
            elif isinstance(node, (ast.If, ast.With)):
                stack.extend(node.body)
    return sorted(n for n in names if n not in local and n != "__future__")


def needs_cuda(sources: dict[str, bytes]) -> bool:
    """Whether the code asks for CUDA without asking whether there is one (autoresearch's train.py:
    `device = torch.device("cuda")`); a harness that falls back to the CPU says `is_available`."""
    text = b"\n".join(sources.values()).decode("utf-8", "replace")
    return bool(_CUDA_ASKED.search(text)) and "is_available" not in text


def data_problem(prepare_py: bytes, home: Path | None = None) -> Problem | None:
    """autoresearch's prepare.py downloads its shards and trains its tokenizer into ~/.cache/autoresearch
    once (`uv run prepare.py`); without them every run fails."""
    if not _AUTORESEARCH_CACHE.search(prepare_py.decode("utf-8", "replace")):
        return None
    cache = (home or Path.home()) / ".cache" / "autoresearch"
    shards = list((cache / "data").glob("*.parquet")) if (cache / "data").is_dir() else []
    if shards and (cache / "tokenizer").is_dir():
        return None
    have = "no data shards" if not shards else "no tokenizer"
    return Problem("data", f"autoresearch's data is not prepared ({cache} has {have})",
                   "run `uv run prepare.py` in the target folder once")


def probe_argv(train_command: str) -> list[str]:
    """The train command's interpreter on PROBE: `/venv/bin/python train.py` -> `/venv/bin/python -c
    PROBE`, `uv run train.py` -> `uv run python -c PROBE`."""
    argv = train_argv(train_command)
    i = next((k for k, a in enumerate(argv) if Path(a).name == "train.py"), len(argv))
    prefix = argv[:i] or [sys.executable]
    if not Path(prefix[-1]).name.startswith("python"):
        prefix = [*prefix, "python"]
    return [*prefix, "-c", PROBE]


def check(train_command: str, files: dict[str, bytes], folder_modules: set[str], device: str = "auto",
          timeout_s: float = 180.0, home: Path | None = None) -> list[Problem]:
    """Every problem the genesis's files would meet under `train_command` (empty: none found)."""
    sources = {n: files[n] for n in ("train.py", "prepare.py") if n in files}
    modules = imported_modules(sources, folder_modules)
    argv = probe_argv(train_command)
    cuda = device != "cpu" and needs_cuda(sources)
    try:
        r = subprocess.run([*argv, "cuda" if cuda else "-", *modules], capture_output=True, text=True,
                           timeout=timeout_s)
        info = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return [Problem("interpreter", f"the train command's interpreter does not start ({argv[0]}: {e})",
                        "check research.train_command in node.toml")]
    if info is None:
        last = ((r.stderr or "").strip().splitlines() or ["no output"])[-1][:200]
        return [Problem("interpreter", f"the train command's interpreter fails ({argv[0]}: {last})",
                        "check research.train_command in node.toml")]
    problems = []
    if info["missing"]:
        where = info.get("python") or argv[0]
        problems.append(Problem("imports", f"train.py or prepare.py imports {', '.join(info['missing'])}, which "
                                f"{where} cannot find",
                                "install the target's environment (`uv sync` in its folder) or set "
                                "research.train_command to an interpreter that has them"))
    if cuda and info.get("cuda") is False:
        problems.append(Problem("device", "train.py asks for a CUDA device and this machine has none visible "
                                "to the train command's torch",
                                "run it where a CUDA GPU is visible (autoresearch's train.py needs one), or "
                                "use a CPU target (the default target, or a CPU fork of train.py)"))
    if "prepare.py" in files and (p := data_problem(files["prepare.py"], home)) is not None:
        problems.append(p)
    return problems


_REPEATS = (
    ("ModuleNotFoundError", "install the target's environment (`uv sync` in its folder)"),
    ("No module named", "install the target's environment (`uv sync` in its folder)"),
    ("not compiled with CUDA", "run it where a CUDA GPU is visible, or use a CPU target"),
    ("Found no NVIDIA driver", "run it where a CUDA GPU is visible, or use a CPU target"),
    ("No CUDA GPUs are available", "run it where a CUDA GPU is visible, or use a CPU target"),
    ("cannot start", "check research.train_command in node.toml"),
)


def will_repeat(reason: str) -> str | None:
    """The fix for a baseline crash that another try cannot change (a missing module, no CUDA, an
    interpreter that does not start); None for one that may not repeat (out of memory, a time limit)."""
    for words, fix in _REPEATS:
        if words in reason:
            return fix
    return None
