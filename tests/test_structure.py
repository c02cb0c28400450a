"""Structure: every config key declares its role and everything derives from it; the
core imports nothing from the command line or the tools; metric names live in
metrics.py; one argv parser for every entry point; docs/design.md covers every key."""

import ast
import re
from pathlib import Path

import pytest

from jaxcollective import config as C
from jaxcollective.train.checkpoint import fingerprint
from jaxcollective.cli import UsageError, parse_argv
from jaxcollective.config import FIELDS, Config, Role

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "jaxcollective"
# The core computes; the command line and the tools sit on top of it (docs/layout.md).
CORE = ("config", "api", "util", "model", "data", "train")
OUTSIDE_CORE = (
    "cli",
    "main",
    "rerun",
    "wandb_run",
    "bench",
    "sweep",
    "report",
    "study",
    "model.torch_reference",
)


def module_name(path: Path) -> str:
    """`jaxcollective/train/step.py` -> `train.step`; a package's __init__ is the package."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py") if module_name(p)}


def test_every_key_declares_a_role_and_why():
    for k, f in FIELDS.items():
        assert isinstance(f.metadata.get("role"), Role), f"{k} has no role"
        assert f.metadata.get("why"), f"{k} has no reason for its role"


# A valid other value for each key, to see what a change of it does.
OTHER = {
    "model_type": "deep",
    "dataset": "digits",
    "synthetic_like": "mnist",
    "target_params": 123456,
    "collective_version": "encoder_head",
    "optimizer": "sgd",
    "dtype": "bfloat16",
    "use_mixed_precision": True,
    "topk": (1, 5),
    "device": "cpu",
    "resume": "never",
    "expert_hidden": (64, 32),
    "analyst_hidden": (32, 16),
    "n_experts": 3,
    "input_dim": 784,
    "num_classes": 10,
    "training_strategy": "x",
    "expert_ratio": 0.3,
    "val_split": 0.2,
    "drop_models_expert_rate": 0.3,
    "drop_models_analyst_rate": 0.3,
    "adaptive_collective_max_dim": 4096,
}


def other_value(key, value):
    if key in OTHER:
        return OTHER[key]
    return {
        bool: lambda v: not v,
        int: lambda v: (v or 1) + 1,
        float: lambda v: v * 0.5 if v else 0.1,
        str: lambda v: v + "x",
        type(None): lambda v: 1,
    }[type(value)](value)


def changed(cfg: Config, key: str) -> Config:
    if key in ("dtype", "use_mixed_precision"):
        return cfg.replace(**{key: OTHER[key]})
    return Config.from_dict(
        {**cfg.to_dict(), key: other_value(key, getattr(cfg, key)), "use_mixed_precision": None}
    )


@pytest.mark.parametrize("model_type", ["collective", "shallow"])
def test_fingerprint_and_program_key_follow_the_declared_roles(model_type):
    base = Config.from_dict({"model_type": model_type, "target_params": 200_000})
    ignored = base.ignored_keys()
    for key in FIELDS:
        other = changed(base, key)
        role = C.role(key)
        # a key counts where either config reads it (lr_plateau_patience > 0 turns the
        # plateau's keys on)
        in_trajectory = key in C.TRAJECTORY_KEYS and not (
            key in ignored and key in other.ignored_keys()
        )
        assert (fingerprint(other) != fingerprint(base)) == in_trajectory, key
        in_program = (role is Role.PROGRAM and key not in ignored) or FIELDS[key].metadata[
            "program_part"
        ] is not None
        part = FIELDS[key].metadata["program_part"]
        if part is not None:  # the program sees part(value): weight_decay 0 vs > 0, val_split
            for a, b in ((0.1, 0.2), (0.0 if key == "weight_decay" else 0.3, 0.1), (0.1, 0.1)):
                ca, cb = base.replace(**{key: a}), base.replace(**{key: b})
                assert (ca.program_key() != cb.program_key()) == (part(a) != part(b)), key
        else:
            assert (other.program_key() != base.program_key()) == in_program, key


def test_derived_lists():
    assert C.NO_EFFECT == {
        "log_interval": "per-epoch-logging",
        "num_workers": "on-device-data",
        "training_strategy": "single-strategy",
        "use_torch_compile": "always-compiled",
    }
    assert C.STEP_VALUES == (
        "drop_models_expert_rate",
        "drop_models_analyst_rate",
        "diversity_lambda",
        "diversity_temperature",
    )
    assert C.VALUE_KEYS == {
        "learning_rate",
        "weight_decay",
        "seed",
        "val_split",
        "lr_plateau_patience",
        "lr_plateau_factor",
        *C.STEP_VALUES,
    }
    assert C.MEMBER_KEYS == C.VALUE_KEYS - {"weight_decay", "val_split"}
    assert set(C.SHARED_SETTINGS) == {
        "epochs",
        "use_augmentation",
        "gradient_accumulation_steps",
        "dtype",
        "lr_plateau_patience",
        "lr_plateau_factor",
        "early_stopping_patience",
    }


def test_value_keys_share_one_compiled_program_and_program_keys_compile_anew():
    from jaxcollective.data.datasets import load
    from jaxcollective.model.sizing import resolve
    from jaxcollective.train.trainer import Trainer

    base = Config.from_dict(
        {
            "model_type": "shallow",
            "dataset": "digits",
            "target_params": 20_000,
            "batch_size": 64,
            "epochs": 1,
            "seed": 0,
        }
    )
    ds = load(base)
    first = Trainer(resolve(base), ds)
    m0 = first.epoch(first.init(), 1)[1]
    assert first._epoch._cache_size() == 1
    # another learning rate and seed: the same compiled program, nothing traced again
    other = base.replace(learning_rate=0.01, seed=3)
    second = Trainer(resolve(other), ds)
    assert second._epoch is first._epoch
    m1 = second.epoch(second.init(), 1)[1]
    assert first._epoch._cache_size() == 1
    assert float(m1["train/loss"][0]) != float(m0["train/loss"][0])  # the values took effect
    # another split: its index arrays have other lengths (val_split's program part)
    assert Trainer(resolve(base.replace(val_split=0.2)), ds)._epoch is not first._epoch
    same_split = Trainer(resolve(base.replace(learning_rate=0.02, seed=5)), ds)
    size = first._epoch._cache_size()
    same_split.epoch(same_split.init(), 1)
    assert first._epoch._cache_size() == size  # nothing traced or compiled
    # a program key: a new program
    assert Trainer(resolve(base.replace(batch_size=32)), ds)._epoch is not first._epoch
    assert Trainer(resolve(base.replace(optimizer="sgd")), ds)._epoch is not first._epoch


def imports_of(name: str) -> set[str]:
    """The package's modules that module `name` imports, anywhere in it (inside functions
    too): `from jaxcollective.x.y import z` and relative imports, resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        elif (node.module or "").startswith("jaxcollective"):
            target = node.module.partition(".")[2]
        else:
            continue
        for alias in node.names:  # `from jaxcollective.train import step` imports a module
            sub = f"{target}.{alias.name}" if target else alias.name
            out.add(sub if sub in MODULES else target)
    return {m for m in out if m and m != name}


def layer_of(name: str) -> str:
    for layer in sorted(CORE + OUTSIDE_CORE, key=len, reverse=True):
        if name == layer or name.startswith(layer + "."):
            return "tools" if layer in OUTSIDE_CORE else "core"
    raise AssertionError(f"a new module {name}: put it in CORE or OUTSIDE_CORE")


def test_the_core_imports_nothing_from_the_command_line_or_the_tools():
    for name in MODULES:
        if layer_of(name) == "core":
            bad = {m for m in imports_of(name) if layer_of(m) == "tools"}
            assert not bad, f"core module {name} imports {bad}"


def test_the_package_has_no_import_cycle():
    """Layers point one way: no module reaches itself through what it imports."""
    graph = {name: imports_of(name) for name in MODULES}
    done, path = set(), []

    def visit(name):
        if name in path:
            cycle = path[path.index(name) :] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        path.append(name)
        for dep in graph[name]:
            visit(dep)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_layers_are_folders_of_small_modules():
    for folder in ("config", "model", "data", "train", "sweep", "report", "study"):
        assert (PKG / folder / "__init__.py").is_file(), folder
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: lines for n, lines in big.items() if lines > 400}, big


METRIC_LITERAL = re.compile(r"[\"'](final|train|val|test|param_efficiency|time)/[a-z_0-9]")


def test_metric_names_are_written_only_in_metrics_py():
    for path in PKG.rglob("*.py"):
        if path.name == "metrics.py":
            continue
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        body = ast.get_docstring(ast.parse(code)) or ""
        hits = [m.group(0) for m in METRIC_LITERAL.finditer(code.replace(body, ""))]
        assert not hits, f"{path.name} writes metric names {hits}; import them from metrics.py"


@pytest.mark.parametrize(
    "argv",
    [
        ["s.yaml", "--parallel", "2", "--set", "a=1", "--set=b=2"],
        ["--parallel=2", "s.yaml", "--set=a=1", "--set", "b=2"],
    ],
)
def test_one_parser_for_every_entry_point_takes_both_spellings(argv):
    from jaxcollective.sweep.runner import OPTIONS

    _, opts = parse_argv(
        argv,
        OPTIONS,
        flags=("help",),
        repeated=("set",),
        positional="sweep_file",
        config_keys=False,
    )
    assert opts == {"sweep_file": "s.yaml", "parallel": "2", "set": ["a=1", "b=2"]}
    with pytest.raises(UsageError, match="unknown option --paralel"):
        parse_argv(["s.yaml", "--paralel=2"], OPTIONS, positional="sweep_file", config_keys=False)
    with pytest.raises(UsageError, match="unexpected argument 't.yaml'"):
        parse_argv(["s.yaml", "t.yaml"], OPTIONS, positional="sweep_file", config_keys=False)
    values, opts = parse_argv(
        ["--epochs", "3", "--use_augmentation", "--model", "deep", "-h"],
        {"help": ""},
        flags=("help",),
    )
    assert values == {"epochs": "3", "use_augmentation": "true", "model_type": "deep"}
    assert opts == {"help": "true"}


def test_design_doc_lists_every_key_with_its_role():
    text = (ROOT / "docs" / "design.md").read_text()
    for k, f in FIELDS.items():
        assert re.search(rf"^\| `{k}` \| {f.metadata['role'].value} \|", text, re.M), k
    code = "\n".join(
        p.read_text()
        for p in [*PKG.rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    )
    for section in {" ".join(s.split()) for s in re.findall(r'docs/design\.md, "([^"]+)"', code)}:
        assert re.search(rf"^## {re.escape(section)}$", text, re.M), section
    assert "SPEC" not in code


def test_the_code_is_linted_and_formatted_by_ruff():
    """pyproject.toml's [tool.ruff]: every contributor's editor formats alike, and CI
    (this test, in README's test command) keeps it so."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements.txt pins it)")
    for cmd in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{' '.join(cmd[1:])}:\n{p.stdout[-3000:]}{p.stderr[-2000:]}"
