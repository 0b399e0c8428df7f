"""Presets, overrides, validation and the run hash."""

import dataclasses
import json

import pytest

from lottery_keras import config


def test_es667_preset_matches_the_study():
    exp = config.from_preset("es667", "mnist", "lenet300_100")
    assert (exp.init, exp.learning_rate, exp.batch_size, exp.iterations, exp.rounds) == \
        ("he_normal", 1.2e-3, 60, 40_000, 16)
    assert exp.rates_by_kind == {"fc": 0.3, "conv": 0.3, "output": 0.3}
    assert exp.eval_every == 55_000 // 60 and not exp.augment
    cifar = config.from_preset("es667", "cifar10", "conv6")
    assert cifar.batch_size == 60 and cifar.augment and cifar.eval_every == 750  # the study's ES grid: 45,000 / 60


def test_preset_of_recognises_a_protocol_whatever_its_seed_and_rounds():
    assert config.preset_of(config.from_preset("es667", "fashion", "lenet5", seed=3, rounds=4)) == "es667"
    assert config.preset_of(config.from_preset("frankle2019", "mnist", "lenet300_100", rounds=19)) == "frankle2019"
    assert config.preset_of(config.from_preset("es667", "mnist", "lenet5", iterations=600)) is None


def test_frankle2019_preset_matches_the_paper():
    lenet = config.from_preset("frankle2019", "mnist", "lenet300_100")
    assert (lenet.init, lenet.learning_rate, lenet.iterations, lenet.eval_every) == \
        ("glorot_normal", 1.2e-3, 50_000, 100)
    assert lenet.rates_by_kind == {"fc": 0.2, "conv": 0.1, "output": 0.1}
    conv6 = config.from_preset("frankle2019", "cifar10", "conv6")
    assert (conv6.learning_rate, conv6.iterations, conv6.prune_conv) == (3e-4, 30_000, 0.15)


def test_overrides_and_prune_rate_shorthand():
    exp = config.from_preset("es667", "mnist", "lenet5", prune_rate=0.2, prune_output=0.1, batch_size=100, seed=None)
    assert exp.rates_by_kind == {"fc": 0.2, "conv": 0.2, "output": 0.1}
    assert exp.eval_every == 550 and exp.seed == 0


@pytest.mark.parametrize("overrides, message", [
    ({"prune_fc": 0.0}, "strictly between 0 and 1"),
    ({"prune_fc": 1.0}, "at most 0.99"),
    ({"prune_fc": 0.9999999}, "at most 0.99"),
    ({"rounds": 0}, "at least 1"),
    ({"learning_rate": 0.0}, "positive"),
    ({"batch_size": 70_000}, "exceeds"),
    ({"init": "zeros"}, "unknown init"),
    ({"dropout": 0.5}, "unknown configuration field"),
])
def test_invalid_values_are_rejected_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.from_preset("es667", "mnist", "lenet300_100", **overrides)


def test_the_largest_pruning_rate_is_accepted_and_recorded_larger_ones_still_load():
    assert config.from_preset("es667", "mnist", "lenet300_100", prune_rate=0.99).prune_output == 0.99
    recorded = config.from_preset("es667", "mnist", "lenet300_100").to_dict() | {"prune_fc": 0.995}
    assert config.Experiment.from_dict(recorded).prune_fc == 0.995


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        config.from_preset("mine", "mnist", "lenet5")
    with pytest.raises(ValueError, match="unknown dataset"):
        config.from_preset("es667", "svhn", "lenet5")
    with pytest.raises(ValueError, match="unknown architecture"):
        config.from_preset("es667", "mnist", "vgg19")


def test_the_hash_names_the_run_and_ignores_only_the_number_of_rounds():
    base = config.from_preset("es667", "fashion", "lenet_fc")
    assert base.run_name.startswith("fashion_mnist-lenet300_100-")
    assert base.run_name == config.from_preset("es667", "fashion_mnist", "lenet300_100", rounds=3).run_name
    for change in ({"seed": 1}, {"learning_rate": 1e-3}, {"prune_fc": 0.2}, {"precision": "bfloat16"}):
        assert config.from_preset("es667", "fashion", "lenet_fc", **change).run_name != base.run_name


def test_global_pruning_hashes_only_the_rate_it_uses():
    def experiment(**overrides):
        return config.from_preset("frankle2019", "mnist", "lenet5", pruning_scope="global", **overrides)

    base = experiment()
    assert dataclasses.replace(base, prune_conv=0.5, prune_output=0.05).hash == base.hash
    assert experiment(prune_fc=0.3).hash != base.hash
    layerwise = config.from_preset("frankle2019", "mnist", "lenet5")
    assert dataclasses.replace(layerwise, prune_conv=0.5).hash != layerwise.hash
    with pytest.raises(ValueError, match="--prune-conv and --prune-output apply to layerwise pruning only"):
        experiment(prune_conv=0.9)


def test_options_added_later_leave_published_runs_as_they_are():
    """Published run names and configuration files stay as they were without the rewinding and schedule options."""
    published = {("mnist", "lenet300_100"): "77d8bf14f1", ("fashion", "lenet300_100"): "1319c54e42",
                 ("mnist", "lenet5"): "f4de64105d"}
    for (dataset, arch), digest in published.items():
        experiment = config.from_preset("es667", dataset, arch)
        assert experiment.hash == digest
        assert not {"rewind_iteration", "warmup_iterations", "lr_drops", "lr_drop_factor"} & set(experiment.to_dict())
    base = config.from_preset("es667", "mnist", "lenet300_100")
    assert config.from_preset("es667", "mnist", "lenet300_100", lr_drop_factor=0.5).hash == base.hash  # no drops
    scheduled = config.from_preset("es667", "mnist", "lenet300_100", lr_drops=(20_000,), rewind_iteration=500)
    assert scheduled.hash != base.hash
    assert config.Experiment.from_dict(json.loads(json.dumps(scheduled.to_dict()))) == scheduled


def test_the_command_line_and_find_ticket_take_every_declared_protocol_field():
    """One declaration (`Experiment`'s field options) gives the CLI's flags and help and find_ticket's keywords."""
    import inspect

    import lottery_keras
    from lottery_keras import cli
    from lottery_keras.lottery import find

    parser = cli.build_parser()
    run = next(action for action in parser._subparsers._group_actions[0].choices["run"]._actions
               if action.dest == "learning_rate")
    assert run.option_strings == ["--lr"] and run.help == "Adam learning rate"
    options = config.protocol_options()
    assert set(options) <= set(vars(parser.parse_args(["run"])))  # each is an option of `run.py run`
    keywords = inspect.signature(lottery_keras.find_ticket).parameters
    assert set(options) - set(config.OWN_MODEL_KEEPS) <= set(keywords)
    assert all(keywords[name].default is None for name in find.PROTOCOL)
    documentation = " ".join(lottery_keras.find_ticket.__doc__.split()).lower()
    assert all(option.help.lower() in documentation for option in find.PROTOCOL.values())
    with pytest.raises(TypeError, match="unexpected keyword argument.*iteration; the protocol's are: learning_rate"):
        lottery_keras.find_ticket(None, "mnist", iteration=5)


def test_find_tickets_defaults_follow_the_es667_preset(monkeypatch):
    """Changing the preset changes find_ticket's defaults: they are not typed again."""
    from lottery_keras.lottery import find

    study = config.es667_protocol

    monkeypatch.setattr(config, "es667_protocol", lambda train_size, augment: {**study(train_size, augment),
                                                                               "rounds": 3, "iterations": 7})
    experiment = find.prepare("lenet300_100", "mnist").experiment
    assert (experiment.rounds, experiment.iterations, experiment.learning_rate) == (3, 7, 1.2e-3)
    assert find.prepare("lenet300_100", "mnist", iterations=9).experiment.iterations == 9
