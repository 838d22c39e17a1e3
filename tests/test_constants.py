import ast
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.research.constants import (
    ConstantsError,
    changed_constants,
    constants_only_change,
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
    ("A = 1\nB = 2 + 1\n", "changes"),
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
