"""The typed configuration: every flag is one field, overrides fail on unknown names, old flag
names still work, and a run's saved flags.txt gives back the same Config."""

import dataclasses

import pytest
from absl import flags

from lbtf.experiments import config as config_lib
from lbtf.experiments.flags import RENAMED, module_flags, parse
from lbtf.remedies import OFF, REGIMES


def _fields() -> dict[str, str]:
    """Field name -> group, over every group of Config."""
    out = {}
    for group in dataclasses.fields(config_lib.Config):
        cls = type(getattr(parse([]), group.name))
        for f in dataclasses.fields(cls):
            assert f.name not in out, f"field {f.name} in two groups"
            out[f.name] = group.name
    return out


def test_every_flag_is_exactly_one_field_and_back():
    names = {f.name for f in module_flags()}
    fields = set(_fields()) - {"flags_text", "explicit"}
    assert names == fields
    assert not names & set(RENAMED)  # old names are aliases, not flags of their own


def test_values_are_typed():
    cfg = parse(["--lb_batch_size=10%", "--sb_batch_size=64", "--epsilons=1e-3,5e-4",
                 "--lr_milestones=30,60", "--batch_sizes=256,0.1", "--synthetic_shape=32,32,3"])
    t = cfg.training
    assert (t.sb_batch_size, t.lb_batch_size, t.lr_milestones) == (64, 0.1, (30, 60))
    assert cfg.measure.epsilons == (1e-3, 5e-4) and cfg.experiment.batch_sizes == (256, 0.1)
    assert cfg.data.synthetic_shape == (32, 32, 3) and cfg.measure.bn_measure == ("moving", "batch")
    assert isinstance(t.sb_batch_size, int) and isinstance(t.lb_batch_size, float)


def test_override_replaces_fields_of_any_group_and_refuses_unknown_names():
    cfg = parse([])
    new = config_lib.override(cfg, bn_layer="ghost", sam_rho=0.05, trials=7)
    assert (new.model.bn_layer, new.remedies.sam_rho, new.training.trials) == ("ghost", 0.05, 7)
    assert (cfg.model.bn_layer, cfg.remedies.sam_rho, cfg.training.trials) == ("standard", 0.0, 3)
    assert new.measure is cfg.measure  # untouched groups are shared, not copied
    with pytest.raises(TypeError, match="sam_roh"):
        config_lib.override(cfg, sam_roh=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.trials = 5


def test_every_remedy_regime_names_existing_fields():
    cfg = parse([])
    assert set(OFF) <= set(_fields())
    for name, turn_on in REGIMES.items():
        changes = turn_on(cfg.remedies)
        regime = config_lib.override(cfg, {**OFF, **changes})
        assert regime != cfg, name  # the regime changes something
    assert REGIMES["sam"](parse(["--sam_rho=0.2"]).remedies) == {"sam_rho": 0.2}
    assert REGIMES["sam"](cfg.remedies) == {"sam_rho": 0.05}  # Foret et al.'s value when unset


def test_old_bn_flag_names_are_aliases():
    old = parse(["--bn=ghost", "--bn_stats=interpolate", "--measure_bn=batch",
                 "--measure_bn_chunk=700"])
    new = parse(["--bn_layer=ghost", "--bn_path=interpolate", "--bn_measure=batch",
                 "--bn_measure_chunk=700"])
    assert old == new
    assert "--bn_layer=ghost" in old.run.flags_text and "--bn=" not in old.run.flags_text


def test_saved_flags_give_back_the_same_config(tmp_path):
    cfg = parse(["--network=F2", "--lb_batch_size=0.2", "--nosharpness", "--epsilons=1e-3",
                 "--run_name=x", "--lr_milestones=5"])
    saved = tmp_path / "flags.txt"
    saved.write_text(cfg.run.flags_text)
    assert parse([f"--flagfile={saved}"]) == cfg


def test_bad_flags_fail_while_parsing():
    with pytest.raises(flags.IllegalFlagValueError, match="--bn_measure"):
        parse(["--bn_measure=frozen"])


def test_flags_and_config_load_without_tensorflow():
    """A mistyped flag is reported before TensorFlow's seconds-long import."""
    import subprocess
    import sys

    code = ("import sys, lbtf.experiments.flags, lbtf.experiments.config; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_milestones_no_run_reaches_are_named_in_a_warning():
    from lbtf.experiments.prepare import milestone_warning

    cfg = parse(["--flagfile=flags/hoffer_resnet44.flags"])
    assert milestone_warning(cfg) == (
        "warning: --lr_milestones 122, 164 lie at or beyond --max_epochs=100: the learning rate "
        "never changes there (drop them, or raise --max_epochs to reach them)")
    assert milestone_warning(parse(["--flagfile=flags/hoffer_F1.flags"])) is None
    assert "--lr_milestones 100 " in milestone_warning(parse(["--lr_milestones=100",
                                                              "--max_epochs=100"]))


def test_the_config_knows_which_flags_were_given():
    cfg = parse(["--network=F2", "--seed=0"])  # 0 is the default: given all the same
    assert {"network", "seed"} <= set(cfg.run.explicit) and "dataset" not in cfg.run.explicit
