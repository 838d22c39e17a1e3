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
    ({"research": {"workers": 65}}, "research.workers must be from 1 to 64, got 65"),
    ({"research": {"workers": "many"}}, 'research.workers must be an integer or "auto", got \'many\''),
    ({"verification": {"tolerance": -0.5}}, "verification.tolerance must be more than 0, got -0.5"),
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


def test_keys_with_a_named_mode_read_the_name_a_number_and_an_old_file_s_zero():
    """No magic numbers: a key's mode has a name in node.toml and is None in the node; node.toml files
    written before (0, or a negative margin, for the mode) still read the same."""
    from p2p_research.config import dump_config

    cfg = config_from_dict({"research": {"margin": "auto", "threads": 4, "workers": 0, "run_timeout_s": 0},
                            "verification": {"quorum": "off", "replicas": 0, "tolerance": "auto", "defer_s": 90}})
    r, v = cfg.research, cfg.verification
    assert (r.margin, r.threads, r.workers, r.run_timeout_s) == (None, 4, None, None)
    assert (v.quorum, v.replicas, v.tolerance, v.defer_s) == (None, None, None, 90.0)
    assert config_from_dict({"research": {"margin": -1.0}}).research.margin is None  # an old file's "automatic"
    assert config_from_dict({"research": {"margin": 0}}).research.margin == 0.0  # autoresearch's rule, not a mode
    assert NodeConfig().verification.quorum == 2 and NodeConfig().research.budget_tokens is None
    text = dump_config(cfg)
    assert 'margin = "auto"' in text and 'quorum = "off"' in text and 'replicas = "all"' in text
    assert 'budget_tokens = "default"' in text and 'budget_seconds = "off"' in text
    import tomllib

    again = config_from_dict(tomllib.loads(text))
    assert again == cfg


def test_the_configuration_in_force_names_each_automatic_value_and_its_source():
    from p2p_research.research.effective import Facts, resolve

    cfg = config_from_dict({"research": {"threads": 3}, "verification": {"quorum": "off"}})
    facts = Facts(margin=0.004, margin_from="2 sigma of the noise measured here", time_limit_s=180.0,
                  expected_run_s=24.0, workers=[{}], defer_s=96.0)
    table = resolve(cfg, facts, "500000 tokens")
    assert table["research.margin"] == {"set": "auto", "effective": 0.004, "from": "2 sigma of the noise measured here"}
    assert table["verification.tolerance"]["effective"] == 0.008  # 2 x the margin in force
    assert table["research.threads"]["set"] == 3 and table["research.threads"]["from"] == "as set"
    assert table["verification.quorum"]["effective"] == "off" and table["verification.defer_s"]["effective"] == 96.0
    assert table["research.budget"] == {"set": "default", "effective": "500000 tokens", "from": "the harness's default"}
