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
