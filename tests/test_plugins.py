"""The plugin system: discovery, clear failures, the example third-party gate end to end."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, build_demo_trainer
from gates.contract import GateError
from gates.manager import PluginError
from trainers.plugins import get_plugins, load_plugins

FAST = ("OPTIM.MAX_EPOCH", 1, "DATASET.NUM_SHOTS", 2)


def fake_distribution(root, dist, module, source, entry_name=None):
    """A distribution importlib.metadata finds: <dist>-0.1.dist-info plus a module on sys.path."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gatescope]\n{entry_name or dist} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_builtin_gates_register_like_plugins():
    plugins = load_plugins(autoload=False)
    assert {"constant", "scalar", "mlp", "softmax", "topk", "gumbel", "keyquery", "sigmoid"} <= set(plugins.gates)
    assert all(plugins.gates[g].plugin.name == "gates.builtin" for g in ("constant", "mlp"))


def test_plugin_failing_at_import_is_named_with_its_distribution(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "broken-gate", "broken_gate_mod", "raise ImportError('no module named torchx')")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'broken-gate' \(distribution broken-gate 0.1.*torchx"):
        load_plugins(autoload=True)


def test_autoload_can_be_turned_off(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "broken-gate", "broken_gate_mod", "raise ImportError('boom')")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GATESCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "broken-gate" not in load_plugins().info


def test_plugin_failing_at_registration_is_named(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "bad-register", "bad_register_mod", """
        from gates import hookimpl
        @hookimpl
        def gatescope_register_gates(register):
            raise RuntimeError("forgot to build the factory")
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin 'bad-register'.*gatescope_register_gates.*forgot"):
        load_plugins(autoload=True)


def test_two_plugins_registering_one_gate_name_is_an_error_naming_both(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "copycat", "copycat_mod", """
        from gates import hookimpl
        @hookimpl
        def gatescope_register_gates(register):
            register("mlp", lambda cfg, k, d, kind: None)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="gate 'mlp' is registered twice.*gates.builtin.*copycat"):
        load_plugins(autoload=True)


def test_gate_returning_a_wrong_shape_is_caught_when_the_model_is_built(tmp_path, monkeypatch, demo_root):
    fake_distribution(tmp_path, "wrong-shape", "wrong_shape_mod", """
        import torch
        from gates import Gate, hookimpl
        class Half(Gate):
            kind = "mask"
            def forward(self, cond):
                return torch.full((cond.shape[0], self.num_options // 2 + 1), 0.5)
        @hookimpl
        def gatescope_register_gates(register):
            register("half", lambda cfg, k, d, kind: Half(k, d))
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("trainers.plugins._MANAGER", load_plugins(autoload=True))
    with pytest.raises(GateError, match=r"gate 'half' returned shape \(3, 3\); expected \(B, K\) = \(3, 4\)"):
        build_demo_trainer(demo_root, tmp_path / "out", trainer="CoOpGated", opts=FAST + ("GATE.NAME", "half"))


def test_unknown_gate_lists_the_available_ones(demo_root, tmp_path):
    with pytest.raises(KeyError, match="Available gates: .*constant.*mlp"):
        build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated", opts=FAST + ("GATE.NAME", "mpl"))


def test_example_plugin_is_installed_and_used_through_gate_name(demo_root, tmp_path, monkeypatch):
    plugins = load_plugins(autoload=True)
    assert "lowrank" in plugins.gates, "run `pip install ./tests/example_plugin` (the README's test command does)"
    info = plugins.gates["lowrank"].plugin
    assert (info.name, info.distribution, info.version) == ("lowrank", "gatescope-lowrank-gate", "0.1.0")
    monkeypatch.setattr("trainers.plugins._MANAGER", plugins)
    trainer = build_demo_trainer(demo_root, tmp_path, trainer="CoOpGated",
                                 opts=FAST + ("GATE.NAME", "lowrank", "GATE.LOWRANK.RANK", 2))
    gate = trainer.gate_head.gate
    assert type(gate).__name__ == "LowRankGate" and gate.down.out_features == 2
    before = gate.up.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, gate.up.weight)


def test_gatescope_plugins_command_shows_the_example_plugin(tmp_path):
    # The installed console script, run outside the repository: every package must be installed.
    script = os.path.join(os.path.dirname(sys.executable), "gatescope")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([script, "plugins"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**env, "GATESCOPE_DISABLE_PLUGIN_AUTOLOAD": "0"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("lowrank"))
    assert "gatescope-lowrank-gate" in row and "0.1.0" in row
    assert any(line.startswith("gates.builtin") and "mlp" in line for line in lines)
    assert any(line.startswith("diagnostics.plugin") for line in lines)
    assert "CoOpGated" in result.stdout


def test_a_plugin_can_add_a_trainer_and_config_keys(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "extra-trainer", "extra_trainer_mod", """
        from yacs.config import CfgNode as CN
        from gates import hookimpl
        from trainers.coop import CoOp
        class CoOpTwin(CoOp):
            pass
        @hookimpl
        def gatescope_register_trainers(register):
            register(CoOpTwin)
        @hookimpl
        def gatescope_add_config(cfg):
            cfg.TWIN = CN()
            cfg.TWIN.ALPHA = 0.5
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("trainers.plugins._MANAGER", load_plugins(autoload=True))
    from trainers.config import extend_cfg
    from trainers.engine import TRAINER_REGISTRY, get_cfg_default
    # The registry is process-wide: give the plugin's trainer a copy that the test throws away.
    monkeypatch.setattr(TRAINER_REGISTRY, "_obj_map", dict(TRAINER_REGISTRY._obj_map))
    cfg = extend_cfg(get_cfg_default())
    assert cfg.TWIN.ALPHA == 0.5 and "CoOpTwin" in TRAINER_REGISTRY
    assert get_plugins().info["extra-trainer"].trainers == ["CoOpTwin"]
    # A subclass of CoOp registered after CoOpGated must not wipe the study keys CoOpGated adds.
    assert "USE_GATE" in cfg.TRAINER.COOP


def test_readme_shows_the_example_plugin_in_full_and_ci_runs_the_readme_test_command():
    root = REPO
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    for name in ("gatescope_lowrank_gate.py", "pyproject.toml"):
        text = open(os.path.join(root, "tests", "example_plugin", name), encoding="utf-8").read().rstrip()
        assert text in readme, f"README's 'Write your own gate' no longer shows tests/example_plugin/{name}"
    test_command = readme.split("```bash\n", 1)[1].split("\n")[1]
    ci = open(os.path.join(root, ".ci", "run"), encoding="utf-8").read()
    assert test_command in ci.splitlines()
