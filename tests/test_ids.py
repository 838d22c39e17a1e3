import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p_research.research.ids import Budget, experiment_id, is_hex40, protocol_id

hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)


def test_budget_exactly_one():
    with pytest.raises(ValueError):
        Budget()
    with pytest.raises(ValueError):
        Budget(tokens=1, seconds=1.0)
    with pytest.raises(ValueError):
        Budget(tokens=0)
    assert Budget(tokens=5).env() == {"P2P_BUDGET_TOKENS": "5"}


def test_protocol_depends_on_harness_budget_metric_and_hardware_only_for_wall_clock():
    h = {"prepare.py": b"x = 1\n"}
    base = protocol_id(h, Budget(tokens=100), "val_bpb")
    assert is_hex40(base)
    assert base == protocol_id(dict(h), Budget(tokens=100), "val_bpb")
    assert base != protocol_id({"prepare.py": b"x = 2\n"}, Budget(tokens=100), "val_bpb")
    assert base != protocol_id(h, Budget(tokens=101), "val_bpb")
    assert base != protocol_id(h, Budget(tokens=100), "val_loss")
    assert base != protocol_id(h, Budget(tokens=100), "val_bpb", data_digest="abc")
    # a token budget is hardware-independent; a wall-clock budget is not
    assert base == protocol_id(h, Budget(tokens=100), "val_bpb", hardware_class="gpu")
    wc = protocol_id(h, Budget(seconds=60), "val_bpb", hardware_class="cpu")
    assert wc != protocol_id(h, Budget(seconds=60), "val_bpb", hardware_class="gpu")


@given(hex40, hex40, hex40)
def test_experiment_ids_are_stable_and_distinct(p, t1, t2):
    a = experiment_id(p, t1)
    assert a == experiment_id(p, t1) and is_hex40(a)
    if t1 != t2:
        assert a != experiment_id(p, t2)


def test_experiment_id_rejects_non_tree():
    with pytest.raises(ValueError):
        experiment_id("p", "not-a-tree")
