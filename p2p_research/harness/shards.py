"""autoresearch's data on this node: what a run of peers' code may read, and a shard only this node has.

autoresearch keeps its data as numbered shards in `prepare.DATA_DIR` (`~/.cache/autoresearch/data`):
the training shards the user downloaded and one pinned validation shard (`VAL_FILENAME`, the last
index). For a harness of that shape the node

- **withholds the validation shard** from every run whose code may not go on its own word: the file
  is covered by an unreadable empty one in the run's sandbox (research/io/sandbox.py `masked`), and the
  hand-over's wrapper gives the harness's evaluation zeros of the same shape (harness/handover.py);
- **holds out a private shard**: one index drawn from the node's private seed among the shards the
  user did not download, fetched once by the pinned prepare.py's own `download_single_shard` into
  the node home (which no run sees). The evaluator measures a model on it exactly as on the
  validation shard (`prepare.DATA_DIR` pointed at it, evaluate.py), so a gain that comes from fitting
  the validation shard does not carry over there. The publisher cannot know which of thousands of
  shards it is.

The fetch runs the target's interpreter on the pinned prepare.py, outside any sandbox (it is the
node's own harness, as its data preparation is), with the network the node has. Where it cannot
(offline, every shard already downloaded), the node has no private split and peers' code stays
constants-only, as before.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("p2p_research.harness")

PRIVATE_DIR = "private-split"     # in the node home: no run's sandbox shows it
RECORD = "split.json"
FETCH_SCRIPT = "hold_out.py"
FETCH_TIME_LIMIT_S = 300  # autoresearch's download retries five times; a node does not wait longer at start

# Run by the node beside the pinned prepare.py, under the target's interpreter: prints one JSON line.
HOLD_OUT_SCRIPT = """\
import json, os, random, re, sys
import prepare
out, seed = sys.argv[1], int(sys.argv[2])
val = os.path.join(prepare.DATA_DIR, prepare.VAL_FILENAME)
digits = re.search(r"[0-9]+", prepare.VAL_FILENAME)
def name(i):
    return prepare.VAL_FILENAME[:digits.start()] + str(i).zfill(len(digits.group())) + prepare.VAL_FILENAME[digits.end():]
present = set(os.listdir(prepare.DATA_DIR)) if os.path.isdir(prepare.DATA_DIR) else set()
candidates = [i for i in range(prepare.MAX_SHARD) if i != prepare.VAL_SHARD and name(i) not in present]
if not candidates:
    print(json.dumps({"val": val, "error": "every shard is in the training data: none is left to hold out"}))
    sys.exit(0)
index = random.Random(seed).choice(candidates)
fetched = os.path.join(out, "fetch")
os.makedirs(fetched, exist_ok=True)
prepare.DATA_DIR = fetched  # read when called: the shard lands here, not among the training shards
ok = prepare.download_single_shard(index)
path = os.path.join(fetched, name(index))
if not ok or not os.path.isfile(path):
    print(json.dumps({"val": val, "error": "could not download shard %d" % index}))
    sys.exit(0)
os.replace(path, os.path.join(out, prepare.VAL_FILENAME))
print(json.dumps({"val": val, "index": index}))
"""


def supports_shards(prepare_py: bytes) -> bool:
    """Whether the harness keeps numbered shards with a pinned validation shard (autoresearch's)."""
    return all(name in prepare_py for name in (b"DATA_DIR", b"VAL_FILENAME", b"VAL_SHARD", b"MAX_SHARD",
                                               b"def download_single_shard", b"def make_dataloader"))


@dataclass(frozen=True)
class ShardSplit:
    """The validation shard runs of peers' code must not read, and this node's private shard (a
    folder holding it under the validation shard's name, for the evaluator's `DATA_DIR`)."""

    val_shard: Path
    private_dir: Path | None
    index: int | None = None


def load(home: Path) -> ShardSplit | None:
    """The split a node prepared earlier, where its private shard is still there."""
    try:
        doc = json.loads((home / PRIVATE_DIR / RECORD).read_text())
        val = Path(doc["val"])
        index = doc.get("index")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    private = home / PRIVATE_DIR
    has = isinstance(index, int) and (private / val.name).is_file()
    return ShardSplit(val, private if has else None, index if has else None)


async def prepare(home: Path, prepare_py: bytes, train_command: str, seed: int, env: dict[str, str],
                  runner) -> ShardSplit | None:
    """The node's split, fetching its private shard once (`runner` is research.runner.run_training)."""
    from p2p_research.harness.measure import script_argv
    from p2p_research.research.io.runner import RunLimits

    done = load(home)
    if done is not None and done.private_dir is not None:
        return done
    private = home / PRIVATE_DIR
    private.mkdir(parents=True, exist_ok=True)
    log.info("holding out a private shard: one shard of the harness's data that no run sees, fetched once "
             "with prepare.py's own download_single_shard (it checks peers' code; docs/autoresearch.md)")
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        work = Path(tmp)
        (work / "prepare.py").write_bytes(prepare_py)
        (work / FETCH_SCRIPT).write_text(HOLD_OUT_SCRIPT)
        out = work / "hold_out.log"
        outcome = await runner(work, env, RunLimits(FETCH_TIME_LIMIT_S, 8192, False), out,
                               command=script_argv(train_command, FETCH_SCRIPT, str(private), str(seed)))
        doc = _last_json(out.read_text(errors="replace") if out.exists() else "")
        if outcome.returncode != 0 or doc is None or "val" not in doc:
            log.warning("could not hold out a private shard (%s): peers' code stays constants-only",
                        outcome.reason or (out.read_text(errors="replace")[-300:] if out.exists() else "no output"))
            return None
    record = {"val": doc["val"], "index": doc.get("index")}
    (private / RECORD).write_text(json.dumps(record))
    if "error" in doc:
        log.warning("no private shard: %s; peers' code stays constants-only", doc["error"])
    else:
        log.info("held out a private shard for the evaluation of peers' code")
    return load(home)


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None
