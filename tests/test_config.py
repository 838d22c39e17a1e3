import pytest

from p2p_research.config import ConfigError, NodeConfig, config_from_dict, dump_config, load_config


def test_defaults_round_trip(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text(dump_config(NodeConfig()))
    assert load_config(p) == NodeConfig()


@pytest.mark.parametrize("data, msg", [
    ({"research": {"budget_tokens": "many"}}, "research.budget_tokens must be an integer"),
    ({"research": {"bogus": 1}}, "unknown key research.bogus"),
    ({"nope": {}}, "unknown section"),
    ({"research": {"proposer": "magic"}}, "research.proposer"),
    ({"research": {"proposer": "command"}}, "proposer_command"),
    ({"research": {"budget_tokens": 5, "budget_seconds": 2.0}}, "not both"),
    ({"trust": {"policy": "everyone"}}, "trust.policy"),
    ({"verification": {"policy": "sometimes"}}, "verification.policy"),
    ({"network": {"bootstrap": "x"}}, "list of strings"),
    ({"research": {"enabled": "yes"}}, "true or false"),
])
def test_bad_values_are_named(data, msg):
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
        config_from_dict(data)


def test_bad_toml(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text("[research\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


@pytest.mark.parametrize("data, msg", [
    ({"research": {"device": "tpu"}}, "research.device must be auto, cpu or cuda, got 'tpu'"),
    ({"research": {"workers": 65}}, "research.workers must be from 0 to 64, got 65"),
    ({"research": {"memory_limit_mb": 100}}, "research.memory_limit_mb must be at least 256, got 100"),
    ({"network": {"rate_limit_per_s": 0.0}}, "network.rate_limit_per_s must be more than 0, got 0.0"),
    ({"verification": {"vouch_after": 0}}, "verification.vouch_after must be at least 1, got 0: a vote counts"),
    ({"sandbox": {"mode": "docker"}}, "sandbox.mode must be auto, bwrap, namespaces or off, got 'docker'"),
])
def test_allowed_values_are_declared_beside_each_key(data, msg):
    """Choices and ranges live with the field (config._choice, config._bounded): the error names the
    key, what it may be and what it got."""
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert str(e.value).startswith(msg), str(e.value)
