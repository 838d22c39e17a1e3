import ast
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.research.constants import (
    ConstantsError,
    changed_constants,
    constants_only_change,
    parses,
    read_constants,
    rewrite_constants,
)
from p2p_research.research.mutate import propose_mutation
from p2p_research.research.searchspace import SearchSpaceError, check_against, parse_search_space
from p2p_research.target import TARGET_DIR

TRAIN = (TARGET_DIR / "train.py").read_text()
SPACE = parse_search_space((TARGET_DIR / "program.md").read_text())


def test_embedded_search_space_matches_train_py():
    check_against(SPACE, read_constants(TRAIN))
    assert 10 <= len(SPACE) <= 30


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_builtin_mutation_parses_and_changes_only_constant_values(seed):
    m = propose_mutation(TRAIN, SPACE, random.Random(seed))
    ast.parse(m.source)
    ok, reason = constants_only_change(TRAIN, m.source)
    assert ok, reason
    assert set(changed_constants(TRAIN, m.source)) == set(m.changes)
    new = read_constants(m.source)
    for name in m.changes:
        assert SPACE.params[name].contains(new[name]), (name, new[name])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_mutations_chain(seed):
    rng, src = random.Random(seed), TRAIN
    for _ in range(5):
        src = propose_mutation(src, SPACE, rng).source
    assert constants_only_change(TRAIN, src)[0]


def test_rewrite_keeps_every_other_byte():
    src = "A = 1  # one\nB = -2.5\nC = 'x'\n\ndef f():\n    return A\n"
    out = rewrite_constants(src, {"A": 3, "B": 0.001, "C": "yz"})
    assert out == "A = 3  # one\nB = 0.001\nC = 'yz'\n\ndef f():\n    return A\n"
    with pytest.raises(ConstantsError):
        rewrite_constants(src, {"D": 1})


@pytest.mark.parametrize("new, why", [
    ("A = 1\nB = 2\nprint('hi')\n", "changes code"),
    ("A = 1\nB = 2 + A\n", "changes"),
    ("A = 1\nB = 2**10**10\n", "changes"),
    ("A = 1\nB = len('ab')\n", "changes"),
    ("A = 1\nB = (1, 2)\n", "kind"),
    ("A = 1\n", "changes"),
    ("A = 1\nB = 'two'\n", "kind"),
    ("A = 1\nB = float('nan')\n", "changes"),
    ("A = 1\nB = 2\nimport os\n", "changes code"),
    ("A = (\n", "parse"),
])
def test_trust_check_rejects_anything_but_constant_values(new, why):
    ok, reason = constants_only_change("A = 1\nB = 2\n", new)
    assert not ok and why in reason


def test_trust_check_accepts_value_changes_and_formatting():
    assert constants_only_change("A = 1\nB = 2\n", "A = 5\nB   =   -3  # comment\n")[0]


def test_search_space_errors():
    with pytest.raises(SearchSpaceError):
        parse_search_space("no block")
    with pytest.raises(SearchSpaceError):
        parse_search_space("```toml search-space\n[X]\nkind = 'int'\nlow = 5\nhigh = 1\n```\n")
    with pytest.raises(SearchSpaceError):
        parse_search_space("```toml search-space\n[X]\nkind = 'weird'\n```\n")
    with pytest.raises(SearchSpaceError):
        check_against(parse_search_space("```toml search-space\n[NOPE]\nkind = 'bool'\n```\n"), {"A": 1})


AUTORESEARCH_BLOCK = """\
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
WINDOW_PATTERN = "SSSL" # sliding window pattern
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
EVAL_TOKENS = 40 * 524288
ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2
WARMUP_RATIO = 0.0
MODEL_DIM = DEPTH * ASPECT_RATIO
NEG = -1e-3
"""


def test_constant_expressions_are_constants_and_names_are_code():
    c = read_constants(AUTORESEARCH_BLOCK)
    assert c["TOTAL_BATCH_SIZE"] == 2**19 and c["EVAL_TOKENS"] == 40 * 524288
    assert c["ADAM_BETAS"] == (0.8, 0.95) and c["NEG"] == -1e-3
    assert "MODEL_DIM" not in c  # a name in it: code


def test_rewrite_keeps_the_form_of_constant_expressions():
    out = rewrite_constants(AUTORESEARCH_BLOCK, {"TOTAL_BATCH_SIZE": 2**20, "ADAM_BETAS": (0.9, 0.95),
                                                 "EVAL_TOKENS": 41 * 524288})
    assert "TOTAL_BATCH_SIZE = 2**20 # ~524K" in out
    assert "ADAM_BETAS = (0.9, 0.95) # Adam" in out
    assert "EVAL_TOKENS = 41 * 524288\n" in out
    assert constants_only_change(AUTORESEARCH_BLOCK, out)[0]
    # a value that does not fit the form is written as a literal
    assert "TOTAL_BATCH_SIZE = 300000 #" in rewrite_constants(AUTORESEARCH_BLOCK, {"TOTAL_BATCH_SIZE": 300000})


@pytest.mark.parametrize("new", [
    "TOTAL_BATCH_SIZE = 524288", "TOTAL_BATCH_SIZE = 2 ** 20", "TOTAL_BATCH_SIZE = 4 * 2**18",
    "ADAM_BETAS = (0.85, 0.99)", "EVAL_TOKENS = 20 * 524288",
])
def test_trust_accepts_changes_between_constant_expressions(new):
    name = new.split(" = ")[0]
    lines = [new if line.startswith(name + " ") else line for line in AUTORESEARCH_BLOCK.splitlines()]
    ok, reason = constants_only_change(AUTORESEARCH_BLOCK, "\n".join(lines) + "\n")
    assert ok, reason


@pytest.mark.parametrize("new, why", [
    ("ADAM_BETAS = (0.8, 0.95, 0.99)", "kind"),
    ("ADAM_BETAS = 0.8", "kind"),
    ("TOTAL_BATCH_SIZE = 2**ASPECT_RATIO", "code"),
    ("WINDOW_PATTERN = 'S' * 4", "code"),          # arithmetic on strings is not a constant
    ("TOTAL_BATCH_SIZE = 10**10**10", "code"),      # never evaluated: the exponent is bounded
])
def test_trust_rejects_code_and_kind_changes_in_constants(new, why):
    name = new.split(" = ")[0]
    lines = [new if line.startswith(name + " ") else line for line in AUTORESEARCH_BLOCK.splitlines()]
    ok, reason = constants_only_change(AUTORESEARCH_BLOCK, "\n".join(lines) + "\n")
    assert not ok and why in reason


def test_hostile_expressions_are_bounded():
    """Peers send train.py: evaluating its constants must stay cheap and never raise."""
    deep = "A = " + "(" * 50 + "1" + ",)" * 50 + "\n"
    chain = "A = " + " + ".join(["1"] * 50_000) + "\n"
    for src in (deep, chain, "A = 9**9**9**9\n", "A = 2.0**5000\n", "A = 1/0\n", "A = (-8)**0.5\n",
                "A = " + "[" * 30 + "]" * 30 + "\n"):
        try:
            read_constants(src)
        except ConstantsError:
            pass
        ok, _ = constants_only_change("A = 1\n", src)
        assert not ok


def test_one_parse_answers_every_question_about_a_text(monkeypatch):
    """A node asks of each peer's train.py whether it parses, its constants, and whether it changes only
    constants, again and again: each text is parsed at most twice (once for what it holds, once for its
    code where that is asked later), a peer's text that the trust check asks about first once, however
    often either is asked."""
    from p2p_research.research import constants

    parsed = []
    real_parse = ast.parse
    monkeypatch.setattr(constants.ast, "parse", lambda src, *a, **k: parsed.append(src) or real_parse(src, *a, **k))
    constants._analysis.cache_clear()
    child = rewrite_constants(TRAIN, {"N_LAYER": read_constants(TRAIN)["N_LAYER"] + 1})
    assert parses(TRAIN) and parses(child)
    assert constants_only_change(TRAIN, child) == (True, "only constant values changed")
    assert read_constants(child)["N_LAYER"] == read_constants(TRAIN)["N_LAYER"] + 1
    assert changed_constants(TRAIN, child) and constants_only_change(child, TRAIN)[0]
    for _ in range(3):
        assert parses(child) and constants_only_change(TRAIN, child)[0] and read_constants(TRAIN)
    assert parsed.count(TRAIN) == 2 and parsed.count(child) == 2  # (rewrite_constants parses the new value alone)
    # a peer's text, asked first by the trust check: one parse answers that and everything after
    peers = rewrite_constants(TRAIN, {"N_LAYER": read_constants(TRAIN)["N_LAYER"] + 2})
    assert constants_only_change(TRAIN, peers)[0] and parses(peers) and read_constants(peers)["N_LAYER"]
    assert parsed.count(peers) == 1
    constants._analysis.cache_clear()


def test_what_the_analyses_hold_is_bounded_by_characters_not_only_by_count():
    """A peer's train.py may be 1 MiB with a constant written across most of it (a comment inside its
    parentheses): the cache keeps what it read of texts up to a total number of characters, however
    many texts a hostile peer sends."""
    from p2p_research.research.constants import _AnalysisCache

    cache = _AnalysisCache(max_entries=1000, max_weight=200_000)
    for i in range(20):
        src = f"A = ({i},  # " + "x" * 50_000 + "\n 1)\nB = 2\n"
        found = cache(src)
        assert not found.error and found.sites["A"].value == (i, 1) and found.weight > 50_000
        assert cache._weight <= cache.max_weight and cache._weight == sum(a.weight for a in cache._done.values())
    assert len(cache._done) == 3
    small = _AnalysisCache(max_entries=4)
    for i in range(10):
        small(f"A = {i}\n")
    assert len(small._done) == 4 and small("A = 9\n") is small("A = 9\n")


def test_declared_space_may_address_tuple_elements_and_mutations_keep_forms():
    space = parse_search_space('```toml search-space\n["ADAM_BETAS[1]"]\nkind = "float"\nlow = 0.9\nhigh = 0.999\n'
                               '[TOTAL_BATCH_SIZE]\nkind = "choice"\nchoices = [262144, 524288, 1048576]\n```\n')
    check_against(space, read_constants(AUTORESEARCH_BLOCK))
    rng = random.Random(3)
    seen = set()
    for _ in range(40):
        m = propose_mutation(AUTORESEARCH_BLOCK, space, rng)
        assert constants_only_change(AUTORESEARCH_BLOCK, m.source)[0]
        new = read_constants(m.source)
        assert new["ADAM_BETAS"][0] == 0.8 and 0.9 <= new["ADAM_BETAS"][1] <= 0.999
        if "TOTAL_BATCH_SIZE" in m.changes:
            assert f"TOTAL_BATCH_SIZE = 2**{new['TOTAL_BATCH_SIZE'].bit_length() - 1} #" in m.source
        seen |= set(m.changes)
    assert seen == {"ADAM_BETAS[1]", "TOTAL_BATCH_SIZE"}


def test_inferred_space_follows_the_hyperparameter_block():
    from p2p_research.research.searchspace import infer_search_space

    src = "import os\nBEFORE = 3.0\nos.environ['X'] = '1'\n" + AUTORESEARCH_BLOCK + "x = 1\nPEAK_FLOPS = 989.5e12\n"
    space = infer_search_space(src)
    # MODEL_DIM (code) ends the block, so NEG after it is outside like PEAK_FLOPS and BEFORE
    assert set(space.params) == {"ASPECT_RATIO", "TOTAL_BATCH_SIZE", "EVAL_TOKENS", "ADAM_BETAS[0]", "ADAM_BETAS[1]"}
    left = dict(space.left_out)
    assert all("outside" in left[n] for n in ("PEAK_FLOPS", "BEFORE", "NEG"))
    assert "string" in left["WINDOW_PATTERN"] and "zero" in left["WARMUP_RATIO"]
    assert space.params["TOTAL_BATCH_SIZE"].step == "pow2" and space.params["ADAM_BETAS[1]"].step == "complement"
    rng = random.Random(5)
    for _ in range(50):
        m = propose_mutation(src, space, rng)
        assert constants_only_change(src, m.source)[0], m.description
        for key, (_, new) in m.changes.items():
            assert space.params[key].contains(new), (key, new)


def test_a_string_constant_keeps_its_quote_style():
    """autoresearch writes WINDOW_PATTERN = "SSSL"; a proposal rewrote it as 'SSLL'."""
    from p2p_research.research.constants import rewrite_constants

    src = 'WINDOW_PATTERN = "SSSL"\nOTHER = \'abc\'\nPAIR = ("a", 1)\nQUOTED = "x"\n'
    out = rewrite_constants(src, {"WINDOW_PATTERN": "SSLL", "OTHER": "x", "PAIR": ("b", 2), "QUOTED": 'say "hi"'})
    assert out == 'WINDOW_PATTERN = "SSLL"\nOTHER = \'x\'\nPAIR = ("b", 2)\nQUOTED = \'say "hi"\'\n'


def test_a_node_in_a_swarm_takes_smaller_steps():
    """research/mutate.step_scale: 1 alone, SWARM_STEP_SCALE once other researchers are heard. At a
    smaller scale a continuous knob moves less (median over many draws). That the DES and the daemon
    draw the same steps at either scale is test_pick's comparison."""
    import statistics

    from p2p_research.research.mutate import SWARM_STEP_SCALE, mutate_value, step_scale
    from p2p_research.research.searchspace import Param

    assert step_scale(0) == 1.0 and step_scale(1) == step_scale(34) == SWARM_STEP_SCALE < 1.0
    lr = Param("LEARNING_RATE", "float", low=1e-5, high=1.0, log=True)
    drop = Param("DROPOUT", "float", low=0.0, high=0.5)

    def moves(p: Param, current: float, scale: float) -> float:
        rng = random.Random(7)
        return statistics.median(abs(mutate_value(p, current, rng, scale) - current) for _ in range(400))

    for p, current in ((lr, 0.002), (drop, 0.2)):
        assert moves(p, current, SWARM_STEP_SCALE) < 0.8 * moves(p, current, 1.0), p.name
