"""Pinned harness of the p2p-research target: data, tokenizer, budget, val_bpb, summary.

Experiments never change this file: a change to it is a change of the evaluation protocol.
`train.py` imports what it needs from here (`from prepare import ...`); this file imports nothing
from p2p_research, only the standard library and torch.

Run `python prepare.py` to generate (and cache) the default corpus and print its statistics.

Environment:
  P2P_DATA            file or folder of your own text (folder: every file under it, sorted by relative
                      path, concatenated as bytes); default: the built-in synthetic corpus
  P2P_CACHE_DIR       where the generated corpus is cached (default ~/.cache/p2p-research)
  P2P_BUDGET_TOKENS   training budget in tokens (bytes); default DEFAULT_BUDGET_TOKENS
  P2P_BUDGET_SECONDS  training budget in wall-clock seconds (if set, alone or with the token budget:
                      training stops at whichever is reached first)
  P2P_SEED            seed for torch and the batch sampler (default 0)
  P2P_DEVICE          "cpu", "cuda", "cuda:1", ... (default: cuda if available, else cpu)
  P2P_THREADS         torch.set_num_threads (default: torch's own choice)
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_T_START = time.time()

METRIC = "val_bpb"  # lower is better
HARNESS_VERSION = "p2p-target-1"

VOCAB_SIZE = 256  # byte-level tokenizer: token id = byte value
EVAL_CONTEXT = 256  # context length of the evaluation windows
EVAL_WINDOWS = 128  # fixed number of validation windows -> EVAL_WINDOWS * EVAL_CONTEXT predicted bytes
EVAL_BATCH = 32  # windows per forward pass during evaluation
VAL_FRACTION = 0.05  # the last 5% of the bytes are the validation split
MIN_DATA_BYTES = 8 * (EVAL_CONTEXT + 1)

# Token budget of the default run: the default train.py finishes (training + eval) in about 60 s on a
# 2-core CPU. Results are only comparable under the same budget (it is part of the protocol).
DEFAULT_BUDGET_TOKENS = 500_000

CORPUS_VERSION = "synthetic-world-v1"  # bump whenever the generator's output changes
CORPUS_SEED = 20240601
CORPUS_BYTES = 3_000_000  # generation stops at the first document boundary after this many bytes


# ----------------------------------------------------------------------------------------------------
# Environment: seed, device, budget


def get_seed() -> int:
    return _env_int("P2P_SEED", 0)


def get_device() -> str:
    dev = os.environ.get("P2P_DEVICE", "").strip()
    if dev and dev != "auto":
        return dev
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Budget:
    tokens: int | None  # stop once this many tokens were trained on
    seconds: float | None  # stop once this much training wall-clock time was spent

    def progress(self, tokens_seen: int, elapsed: float) -> float:
        """Fraction of the budget spent, in [0, inf); training stops at >= 1."""
        p = 0.0
        if self.tokens is not None:
            p = max(p, tokens_seen / self.tokens)
        if self.seconds is not None:
            p = max(p, elapsed / self.seconds)
        return p

    def describe(self) -> str:
        parts = []
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        if self.seconds is not None:
            parts.append(f"{self.seconds:g} s")
        return " or ".join(parts)


def get_budget() -> Budget:
    tokens = os.environ.get("P2P_BUDGET_TOKENS", "").strip()
    seconds = os.environ.get("P2P_BUDGET_SECONDS", "").strip()
    t = s = None
    if tokens:
        t = _env_int("P2P_BUDGET_TOKENS", 0)
        if t <= 0:
            _fail(f"P2P_BUDGET_TOKENS must be a positive integer, got {tokens!r}")
    if seconds:
        try:
            s = float(seconds)
        except ValueError:
            s = -1.0
        if not (s > 0 and math.isfinite(s)):
            _fail(f"P2P_BUDGET_SECONDS must be a positive number, got {seconds!r}")
    if t is None and s is None:
        t = DEFAULT_BUDGET_TOKENS
    return Budget(tokens=t, seconds=s)


def setup() -> tuple[str, int]:
    """Apply P2P_THREADS, seed torch, ask for deterministic kernels. Returns (device, seed)."""
    import torch

    threads = os.environ.get("P2P_THREADS", "").strip()
    if threads:
        n = _env_int("P2P_THREADS", 0)
        if n <= 0:
            _fail(f"P2P_THREADS must be a positive integer, got {threads!r}")
        torch.set_num_threads(n)
    device = get_device()
    seed = get_seed()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            _fail(f"P2P_DEVICE={device} but CUDA is not available")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    if device.startswith("cuda"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # The public call also imports Inductor's config, and with it TorchDynamo (1.5 CPU-s, a third of
        # a short run on CPU), only to make torch.compile's GPU autotuning deterministic; on CPU the
        # kernels' switch is all it sets that matters.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    return device, seed


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        _fail(f"{name} must be an integer, got {raw!r}")
        raise  # unreachable


def _fail(msg: str) -> None:
    print(f"prepare.py: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# ----------------------------------------------------------------------------------------------------
# The default corpus: a seeded generator of English-like text with learnable structure.
# Only integer arithmetic and our own PRNG (splitmix64): byte-for-byte identical on every machine.

_MASK = (1 << 64) - 1


class _Rng:
    def __init__(self, seed: int) -> None:
        self.s = seed & _MASK

    def next64(self) -> int:
        self.s = (self.s + 0x9E3779B97F4A7C15) & _MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next64() % n

    def between(self, lo: int, hi: int) -> int:  # inclusive
        return lo + self.below(hi - lo + 1)

    def chance(self, num: int, den: int) -> bool:
        return self.below(den) < num

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def weighted(self, pairs):  # pairs: sequence of (item, integer weight)
        total = sum(w for _, w in pairs)
        r = self.below(total)
        for item, w in pairs:
            if r < w:
                return item
            r -= w
        raise AssertionError

    def shuffled(self, seq) -> list:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out


_NAMES = [
    ("Anna", "f"),
    ("Ben", "m"),
    ("Clara", "f"),
    ("David", "m"),
    ("Elena", "f"),
    ("Felix", "m"),
    ("Greta", "f"),
    ("Hugo", "m"),
    ("Iris", "f"),
    ("Jonas", "m"),
    ("Kira", "f"),
    ("Leo", "m"),
    ("Mira", "f"),
    ("Nico", "m"),
    ("Olga", "f"),
    ("Paul", "m"),
    ("Rosa", "f"),
    ("Sam", "m"),
    ("Tara", "f"),
    ("Umar", "m"),
    ("Vera", "f"),
    ("Walter", "m"),
    ("Yara", "f"),
    ("Zeno", "m"),
    ("Alice", "f"),
    ("Bruno", "m"),
    ("Cora", "f"),
    ("Dario", "m"),
    ("Emma", "f"),
    ("Finn", "m"),
    ("Gina", "f"),
    ("Henry", "m"),
    ("Ines", "f"),
    ("Jack", "m"),
    ("Lena", "f"),
    ("Marco", "m"),
    ("Nora", "f"),
    ("Oscar", "m"),
    ("Petra", "f"),
    ("Quinn", "m"),
    ("Ruth", "f"),
    ("Simon", "m"),
    ("Tilda", "f"),
    ("Victor", "m"),
    ("Wanda", "f"),
    ("Xavier", "m"),
    ("Zoe", "f"),
    ("Igor", "m"),
]
_CITIES = [
    ("Lyon", "France"),
    ("Nantes", "France"),
    ("Lille", "France"),
    ("Porto", "Portugal"),
    ("Braga", "Portugal"),
    ("Faro", "Portugal"),
    ("Bergen", "Norway"),
    ("Oslo", "Norway"),
    ("Tromso", "Norway"),
    ("Graz", "Austria"),
    ("Linz", "Austria"),
    ("Vienna", "Austria"),
    ("Krakow", "Poland"),
    ("Gdansk", "Poland"),
    ("Poznan", "Poland"),
    ("Turin", "Italy"),
    ("Genoa", "Italy"),
    ("Verona", "Italy"),
    ("Leeds", "England"),
    ("York", "England"),
    ("Bristol", "England"),
    ("Aarhus", "Denmark"),
    ("Odense", "Denmark"),
    ("Malmo", "Sweden"),
]
_JOBS = [
    "baker",
    "teacher",
    "farmer",
    "doctor",
    "painter",
    "sailor",
    "nurse",
    "pilot",
    "carpenter",
    "lawyer",
    "chemist",
    "gardener",
    "librarian",
    "plumber",
    "singer",
    "tailor",
    "miner",
    "judge",
    "engineer",
    "fisher",
]
_PETS = ["cat", "dog", "parrot", "rabbit", "horse", "goat", "turtle", "hamster", "pony", "owl"]
_PET_NAMES = [
    "Pip",
    "Max",
    "Luna",
    "Rex",
    "Bella",
    "Milo",
    "Coco",
    "Otto",
    "Ruby",
    "Toby",
    "Nala",
    "Bingo",
    "Daisy",
    "Ziggy",
    "Pepper",
    "Socks",
    "Biscuit",
    "Shadow",
    "Maple",
    "Rocky",
]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
_FOODS = ["soup", "bread", "cheese", "apples", "rice", "fish", "pasta", "plums", "beans", "cake"]
_INSTRUMENTS = ["violin", "piano", "flute", "drum", "guitar", "cello", "trumpet", "harp"]

# grammar: nouns (singular, plural), verbs (base, third person singular, past)
_NOUNS = [
    ("dog", "dogs"),
    ("cat", "cats"),
    ("child", "children"),
    ("farmer", "farmers"),
    ("bird", "birds"),
    ("teacher", "teachers"),
    ("mouse", "mice"),
    ("fox", "foxes"),
    ("man", "men"),
    ("woman", "women"),
    ("sheep", "sheep"),
    ("king", "kings"),
    ("queen", "queens"),
    ("sailor", "sailors"),
    ("wolf", "wolves"),
    ("girl", "girls"),
    ("boy", "boys"),
    ("horse", "horses"),
    ("baker", "bakers"),
    ("goose", "geese"),
]
_PLACES = [
    "the river",
    "the old bridge",
    "the market",
    "the forest",
    "the hill",
    "the harbor",
    "the mill",
    "the garden",
    "the school",
    "the station",
    "the lake",
    "the tower",
    "the village",
    "the field",
]
_ADJS = [
    "old",
    "young",
    "small",
    "big",
    "happy",
    "tired",
    "brave",
    "quiet",
    "clever",
    "hungry",
    "angry",
    "kind",
    "lazy",
    "proud",
    "shy",
    "wild",
]
_V_INTR = [
    ("sleep", "sleeps", "slept"),
    ("run", "runs", "ran"),
    ("sing", "sings", "sang"),
    ("wait", "waits", "waited"),
    ("laugh", "laughs", "laughed"),
    ("swim", "swims", "swam"),
    ("dance", "dances", "danced"),
    ("work", "works", "worked"),
    ("cry", "cries", "cried"),
    ("rest", "rests", "rested"),
    ("fly", "flies", "flew"),
    ("hide", "hides", "hid"),
]
_V_TR = [
    ("see", "sees", "saw"),
    ("chase", "chases", "chased"),
    ("follow", "follows", "followed"),
    ("help", "helps", "helped"),
    ("watch", "watches", "watched"),
    ("find", "finds", "found"),
    ("feed", "feeds", "fed"),
    ("call", "calls", "called"),
    ("like", "likes", "liked"),
    ("teach", "teaches", "taught"),
    ("catch", "catches", "caught"),
    ("meet", "meets", "met"),
]
_ADVS = ["quickly", "slowly", "quietly", "loudly", "happily", "again", "often", "alone", "together"]
_DET_SG = [("the", 6), ("a", 4), ("this", 1), ("that", 1), ("every", 1), ("one", 1)]
_DET_PL = [("the", 6), ("some", 2), ("these", 1), ("those", 1), ("many", 1), ("two", 1), ("three", 1)]
_TIME = {
    "past": ["Yesterday", "Last week", "Long ago", "Once upon a time", "Last night"],
    "present": ["Every day", "Every morning", "Most evenings", "On Sundays", "Usually"],
    "future": ["Tomorrow", "Next week", "Soon", "Next spring", "Tonight"],
}
_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] + ("" if o == 0 else "-" + _ONES[o])
    h, r = divmod(n, 100)
    return _ONES[h] + " hundred" + ("" if r == 0 else " and " + _number_words(r))


class _World:
    """A fixed cast of people with consistent facts, drawn once from the generator's seed."""

    def __init__(self, rng: _Rng) -> None:
        self.people = []
        for name, sex in _NAMES:
            city, country = rng.choice(_CITIES)
            self.people.append(
                {
                    "name": name,
                    "he": "he" if sex == "m" else "she",
                    "his": "his" if sex == "m" else "her",
                    "city": city,
                    "country": country,
                    "job": rng.choice(_JOBS),
                    "pet": rng.choice(_PETS),
                    "pet_name": rng.choice(_PET_NAMES),
                    "color": rng.choice(_COLORS),
                    "food": rng.choice(_FOODS),
                    "instrument": rng.choice(_INSTRUMENTS),
                    "age": rng.between(18, 79),
                }
            )
        n = len(self.people)
        for i, p in enumerate(self.people):  # a friend who is someone else
            p["friend"] = self.people[(i + 1 + rng.below(n - 1)) % n]["name"]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _fact(rng: _Rng, p: dict, subj: str) -> str:
    k = rng.below(9)
    n = p["name"]
    if k == 0:
        return rng.choice(
            [
                f"{subj} lives in {p['city']}.",
                f"{subj} lives in {p['city']}, {p['country']}.",
                f"{subj} is from {p['city']}.",
                f"{subj} has a house in {p['city']}.",
            ]
        )
    if k == 1:
        return rng.choice(
            [
                f"{subj} is {_a(p['job'])}.",
                f"{subj} works as {_a(p['job'])}.",
                f"{subj} has been {_a(p['job'])} for years.",
            ]
        )
    if k == 2:
        return rng.choice(
            [
                f"{subj} has {_a(p['pet'])} named {p['pet_name']}.",
                f"{subj} owns {_a(p['pet'])} called {p['pet_name']}.",
                f"{p['pet_name']} is the {p['pet']} of {n}.",
            ]
        )
    if k == 3:
        return rng.choice(
            [
                f"{subj} is {p['age']} years old.",
                f"{subj} is {_number_words(p['age'])} years old.",
                f"Next year {n} will be {p['age'] + 1}.",
            ]
        )
    if k == 4:
        return rng.choice(
            [
                f"{_cap(p['his'])} favorite color is {p['color']}.",
                f"{subj} likes the color {p['color']}.",
                f"{subj} always wears something {p['color']}.",
            ]
        )
    if k == 5:
        return rng.choice(
            [
                f"{subj} likes to eat {p['food']}.",
                f"{_cap(p['his'])} favorite food is {p['food']}.",
                f"{subj} eats {p['food']} every day.",
            ]
        )
    if k == 6:
        return rng.choice([f"{subj} plays the {p['instrument']}.", f"{subj} can play the {p['instrument']}."])
    if k == 7:
        return rng.choice(
            [f"{_cap(p['his'])} best friend is {p['friend']}.", f"{subj} is a friend of {p['friend']}."]
        )
    return f"{p['city']} is a city in {p['country']}."


def _doc_bio(rng: _Rng, w: _World) -> str:
    p = rng.choice(w.people)
    out = [
        rng.choice(
            [
                f"{p['name']} is {_a(p['job'])} from {p['city']}.",
                f"This is {p['name']}.",
                f"Let me tell you about {p['name']}.",
                f"{p['name']} is {p['age']} years old and lives in {p['city']}.",
            ]
        )
    ]
    for _ in range(rng.between(2, 6)):
        subj = p["name"] if rng.chance(1, 3) else _cap(p["he"])
        out.append(_fact(rng, p, subj))
    return " ".join(out)


def _doc_qa(rng: _Rng, w: _World) -> str:
    lines = []
    for _ in range(rng.between(2, 5)):
        p = rng.choice(w.people)
        n = p["name"]
        k = rng.below(8)
        if k == 0:
            q, a = f"Where does {n} live?", f"{n} lives in {p['city']}."
        elif k == 1:
            q, a = f"In which country does {n} live?", f"{p['country']}."
        elif k == 2:
            q, a = f"What does {n} do?", f"{n} is {_a(p['job'])}."
        elif k == 3:
            q, a = f"What is the name of {n}'s {p['pet']}?", f"{p['pet_name']}."
        elif k == 4:
            q, a = f"How old is {n}?", f"{p['age']}."
        elif k == 5:
            q, a = f"Who is {n}'s best friend?", f"{p['friend']}."
        elif k == 6:
            q, a = f"What is {n}'s favorite color?", f"{_cap(p['color'])}."
        else:
            q, a = f"Which instrument does {n} play?", f"The {p['instrument']}."
        lines.append(f"Q: {q}\nA: {a}")
    return "\n".join(lines)


def _np(rng: _Rng, plural: bool, depth: int = 0) -> str:
    det = rng.weighted(_DET_PL if plural else _DET_SG)
    noun = rng.choice(_NOUNS)[1 if plural else 0]
    words = [det]
    if rng.chance(2, 5):
        adj = rng.choice(_ADJS)
        if det == "a" and adj[0] in "aeiou":
            words[0] = "an"
        words.append(adj)
    words.append(noun)
    if depth == 0 and rng.chance(1, 4):
        words.append(rng.choice(["near", "from", "behind", "at"]) + " " + rng.choice(_PLACES))
    return " ".join(words)


def _verb(v: tuple, tense: str, plural: bool) -> str:
    if tense == "past":
        return v[2]
    if tense == "future":
        return "will " + v[0]
    return v[0] if plural else v[1]


def _be(tense: str, plural: bool) -> str:
    if tense == "past":
        return "were" if plural else "was"
    if tense == "future":
        return "will be"
    return "are" if plural else "is"


def _sentence(rng: _Rng, tense: str) -> str:
    pl = rng.chance(2, 5)
    subj = _np(rng, pl)
    k = rng.below(6)
    if k == 0:
        s = f"{subj} {_verb(rng.choice(_V_INTR), tense, pl)}"
        if rng.chance(1, 2):
            s += " " + rng.choice(_ADVS)
    elif k in (1, 2):
        s = f"{subj} {_verb(rng.choice(_V_TR), tense, pl)} {_np(rng, rng.chance(2, 5), 1)}"
    elif k == 3:
        s = f"{subj} {_be(tense, pl)} {rng.choice(_ADJS)}"
    elif k == 4:  # agreement across a relative clause
        pl2 = rng.chance(1, 2)
        rel = f"{_np(rng, pl2, 1)} {_verb(rng.choice(_V_TR), tense, pl2)}"
        s = f"{subj} that {rel} {_be(tense, pl)} {rng.choice(_ADJS)}"
    else:
        be = _be(tense, pl)
        there = f"there {be}" if tense != "future" else "there will be"
        s = f"{there} {_np(rng, pl, 1)} {rng.choice(['near', 'in', 'behind'])} {rng.choice(_PLACES)}"
    return _cap(s) + "."


def _doc_story(rng: _Rng, w: _World) -> str:
    tense = rng.choice(["past", "present", "future"])
    first = _sentence(rng, tense)
    out = [f"{rng.choice(_TIME[tense])}, {first[0].lower()}{first[1:]}"]
    for _ in range(rng.between(2, 6)):
        if rng.chance(1, 6):
            p = rng.choice(w.people)
            v = rng.choice(_V_INTR)
            out.append(f"{p['name']} {_verb(v, tense, False)} in {p['city']}.")
        else:
            out.append(_sentence(rng, tense))
    return " ".join(out)


def _doc_arith(rng: _Rng, w: _World) -> str:
    lines = []
    for _ in range(rng.between(3, 8)):
        k = rng.below(4)
        if k == 0:
            a, b = rng.between(0, 99), rng.between(0, 99)
            lines.append(f"{a} + {b} = {a + b}")
        elif k == 1:
            a, b = rng.between(0, 99), rng.between(0, 99)
            a, b = max(a, b), min(a, b)
            lines.append(f"{a} - {b} = {a - b}")
        elif k == 2:
            a, b = rng.between(1, 12), rng.between(1, 12)
            lines.append(f"{a} * {b} = {a * b}")
        else:
            a, b = rng.between(0, 20), rng.between(0, 20)
            lines.append(f"{_number_words(a)} plus {_number_words(b)} is {_number_words(a + b)}")
    return "\n".join(lines)


_BRACKETS = ["()", "[]", "{}", "<>"]


def _doc_brackets(rng: _Rng, w: _World) -> str:
    lines = []
    for _ in range(rng.between(2, 5)):
        out, stack = [], []
        target = rng.between(4, 24)
        while len(out) < target or stack:
            if stack and (len(out) >= target or len(stack) > 6 or rng.chance(2, 5)):
                out.append(stack.pop())
            else:
                o, c = rng.choice(_BRACKETS)
                out.append(o)
                stack.append(c)
        lines.append("".join(out))
    return "\n".join(lines)


def _doc_sequence(rng: _Rng, w: _World) -> str:
    lines = []
    for _ in range(rng.between(2, 4)):
        k = rng.below(4)
        n = rng.between(5, 9)
        if k == 0:
            a, d = rng.between(0, 50), rng.between(1, 12)
            xs = [a + i * d for i in range(n)]
            lines.append("count: " + ", ".join(map(str, xs)))
        elif k == 1:
            a, b = rng.between(0, 9), rng.between(1, 9)
            xs = [a, b]
            while len(xs) < n:
                xs.append(xs[-1] + xs[-2])
            lines.append("fib: " + ", ".join(map(str, xs)))
        elif k == 2:
            xs = [rng.between(0, 99) for _ in range(n)]
            lines.append("sort: " + " ".join(map(str, xs)) + " -> " + " ".join(map(str, sorted(xs))))
        else:
            letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
            lines.append(f"reverse: {letters} -> {letters[::-1]}")
    return "\n".join(lines)


_DOC_KINDS = [
    (_doc_story, 30),
    (_doc_bio, 25),
    (_doc_qa, 15),
    (_doc_arith, 12),
    (_doc_sequence, 10),
    (_doc_brackets, 8),
]


def generate_corpus(n_bytes: int = CORPUS_BYTES, seed: int = CORPUS_SEED) -> bytes:
    """The default corpus: documents separated by blank lines, ASCII only, deterministic."""
    rng = _Rng(seed)
    world = _World(rng)
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        doc = rng.weighted(_DOC_KINDS)(rng, world) + "\n\n"
        parts.append(doc)
        size += len(doc)
    return "".join(parts).encode("ascii")


def cache_dir() -> Path:
    d = os.environ.get("P2P_CACHE_DIR", "").strip()
    return Path(d).expanduser() if d else Path.home() / ".cache" / "p2p-research"


def corpus_cache_path() -> Path:
    key = hashlib.sha256(f"{CORPUS_VERSION}|{CORPUS_SEED}|{CORPUS_BYTES}".encode()).hexdigest()[:16]
    return cache_dir() / f"corpus-{key}.txt"


def default_corpus() -> bytes:
    """The generated corpus, read from the cache when present (atomic writes, so never partial)."""
    path = corpus_cache_path()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = generate_corpus()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:  # an unwritable cache is not fatal: we have the bytes
        print(f"prepare.py: warning: could not cache the corpus at {path}: {e}", file=sys.stderr)
    return data


def _read_user_data(spec: str) -> bytes:
    p = Path(spec).expanduser()
    if p.is_file():
        try:
            return p.read_bytes()
        except OSError as e:
            _fail(f"P2P_DATA: cannot read {p}: {e}")
    if p.is_dir():
        files = []
        for root, dirs, names in os.walk(p):
            dirs.sort()
            for name in names:
                f = Path(root) / name
                if f.is_file():
                    files.append((f.relative_to(p).as_posix(), f))
        files.sort()
        if not files:
            _fail(f"P2P_DATA: folder {p} contains no files")
        chunks = []
        for _, f in files:
            try:
                chunks.append(f.read_bytes())
            except OSError as e:
                _fail(f"P2P_DATA: cannot read {f}: {e}")
        return b"".join(chunks)
    _fail(f"P2P_DATA: no such file or folder: {p}")
    raise AssertionError  # unreachable


_TEXT: bytes | None = None


def load_text() -> bytes:
    """All bytes of the dataset: P2P_DATA if set, else the default corpus."""
    global _TEXT
    if _TEXT is None:
        spec = os.environ.get("P2P_DATA", "").strip()
        data = _read_user_data(spec) if spec else default_corpus()
        if len(data) < MIN_DATA_BYTES:
            src = f"P2P_DATA ({spec})" if spec else "the corpus"
            _fail(f"{src} has {len(data)} bytes; need at least {MIN_DATA_BYTES}")
        _TEXT = data
    return _TEXT


def split_bytes() -> tuple[bytes, bytes]:
    """(train, val): val is the last VAL_FRACTION of the bytes (at least 4 eval windows)."""
    data = load_text()
    n_val = max(int(len(data) * VAL_FRACTION), 4 * (EVAL_CONTEXT + 1))
    return data[:-n_val], data[-n_val:]


def load_data(device: str = "cpu"):
    """(train, val) as 1-D torch.uint8 tensors on `device`. Token ids are byte values."""
    import torch

    train, val = split_bytes()
    t = torch.frombuffer(bytearray(train), dtype=torch.uint8).to(device)
    v = torch.frombuffer(bytearray(val), dtype=torch.uint8).to(device)
    return t, v


def eval_window_starts(n_val: int) -> list[int]:
    """Start offsets of the EVAL_WINDOWS fixed validation windows of EVAL_CONTEXT + 1 bytes:
    evenly spaced over the val split (they overlap only when the val split is short)."""
    last = n_val - (EVAL_CONTEXT + 1)
    return [(i * last) // (EVAL_WINDOWS - 1) for i in range(EVAL_WINDOWS)]


def _eval_targets() -> tuple[bytes, list[bytes]]:
    _, val = split_bytes()
    windows = [val[s : s + EVAL_CONTEXT + 1] for s in eval_window_starts(len(val))]
    return val, windows


def evaluate_bpb(model, device: str = "cpu", max_seq_len: int | None = None) -> float:
    """Bits per byte of `model` on the fixed validation windows.

    The model is only called as `model(x) -> logits` with x: (B, T) int64 and logits (B, T, 256).
    Each window gives EVAL_CONTEXT inputs and the EVAL_CONTEXT next bytes as targets. If the model's
    context (`max_seq_len`, else `model.max_seq_len`, else EVAL_CONTEXT) is shorter than EVAL_CONTEXT,
    each window is cut into consecutive chunks of that length, evaluated independently (the context
    restarts at each chunk), so every model predicts the same EVAL_WINDOWS * EVAL_CONTEXT bytes.
    """
    import torch
    import torch.nn.functional as F

    if max_seq_len is None:
        max_seq_len = getattr(model, "max_seq_len", EVAL_CONTEXT)
    chunk = max(1, min(EVAL_CONTEXT, int(max_seq_len)))
    _, windows = _eval_targets()
    data = torch.tensor([list(w) for w in windows], dtype=torch.long)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    total_nats = 0.0
    count = 0
    cuda = str(device).startswith("cuda")
    with torch.no_grad():
        for b in range(0, data.size(0), EVAL_BATCH):
            batch = data[b : b + EVAL_BATCH].to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            for s in range(0, EVAL_CONTEXT, chunk):
                xs, ys = x[:, s : s + chunk], y[:, s : s + chunk]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    logits = model(xs)
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), ys.reshape(-1), reduction="sum"
                )
                total_nats += float(loss.item())
                count += ys.numel()
    if was_training and hasattr(model, "train"):
        model.train()
    return total_nats / count / math.log(2)


def unigram_bpb() -> float:
    """Reference: bits per byte of the add-one smoothed train byte frequencies on the eval targets."""
    train, _ = split_bytes()
    counts = [1] * VOCAB_SIZE
    for b, c in _byte_counts(train).items():
        counts[b] += c
    total = sum(counts)
    _, windows = _eval_targets()
    bits = 0.0
    n = 0
    for w in windows:
        for b in w[1:]:
            bits -= math.log2(counts[b] / total)
            n += 1
    return bits / n


def _byte_counts(data: bytes) -> dict[int, int]:
    out: dict[int, int] = {}
    for b in range(VOCAB_SIZE):  # bytes.count is fast (C); 256 passes over a few MB is fine
        c = data.count(bytes([b]))
        if c:
            out[b] = c
    return out


# ----------------------------------------------------------------------------------------------------
# Summary


def peak_memory_mb(device: str = "cpu") -> float:
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / (1024 * 1024)
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB else


def print_summary(
    *,
    val_bpb: float,
    training_seconds: float,
    num_params: int,
    num_steps: int,
    tokens: int,
    device: str,
    total_seconds: float | None = None,
) -> None:
    """Print the block the node parses: a line `---`, then `key: value` lines."""
    if total_seconds is None:
        total_seconds = time.time() - _T_START
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds:    {total_seconds:.1f}")
    print(f"peak_memory_mb:   {peak_memory_mb(device):.1f}")
    print(f"num_params:       {num_params}")
    print(f"num_steps:        {num_steps}")
    print(f"tokens:           {tokens}")
    print(f"device:           {device}")
    sys.stdout.flush()


def parse_summary(text: str) -> dict[str, str]:
    """Inverse of print_summary: the `key: value` lines after the last `---` line."""
    lines = text.splitlines()
    idx = max((i for i, line in enumerate(lines) if line.strip() == "---"), default=None)
    if idx is None:
        return {}
    out = {}
    for line in lines[idx + 1 :]:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


if __name__ == "__main__":
    t0 = time.time()
    data = load_text()
    train, val = split_bytes()
    src = os.environ.get("P2P_DATA") or f"default corpus ({CORPUS_VERSION}) cached at {corpus_cache_path()}"
    print(f"data:        {src}")
    print(f"bytes:       {len(data)} (train {len(train)}, val {len(val)})")
    print(f"sha256:      {hashlib.sha256(data).hexdigest()}")
    print(f"unigram_bpb: {unigram_bpb():.6f}")
    print(f"eval:        {EVAL_WINDOWS} windows x {EVAL_CONTEXT} bytes")
    print(f"budget:      {get_budget().describe()}")
    print(f"seconds:     {time.time() - t0:.1f}")
