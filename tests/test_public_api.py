"""The package's public names are a contract: this test pins them, and keeps `import scaleplan`
free of heavy imports."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import pytest

import scaleplan

EXPECTED = {
    # configs and loaders
    "GPTConfig", "TrainingConfig", "NanoGPTRun", "from_hf", "load_nanogpt_config",
    "MoE", "MLA",  # issue 18: mixture of experts, multi-head latent attention
    "LoRA",  # issue 19: LoRA / QLoRA fine-tuning
    # parameters
    "ParamCount", "count_params",
    # FLOPs, GPUs, throughput
    "StepFlops", "flops_per_token", "step_flops", "training_flops",
    "GPUSpec", "gpu", "gpus", "register_gpu",
    "Throughput", "TrainingTime", "Utilization", "from_nanogpt_mfu", "mfu", "throughput_at_mfu",
    "time_to_train",
    # scaling laws and token budgets
    "ScalingLaw", "ComputeOptimal", "scaling_law", "scaling_laws", "fit_scaling_law",
    "chinchilla_tokens", "overtraining_ratio", "tokens_seen", "training_compute",
    "critical_batch_size", "data_constrained_loss", "inference_optimal",
    "ExpectedLoss", "expected_loss",  # issue 22: the loss on web text, calibrated
    # memory, batching, planning
    "MemoryBreakdown", "training_memory", "Parallelism", "max_micro_batch_size", "max_seq_len",
    "grad_accum_steps", "Plan", "plan", "plan_for_budget", "sweep",
    # issue 19: serving (KV cache, inference memory, limits, speed)
    "kv_cache_bytes_per_token", "kv_cache_bytes", "InferenceMemory", "inference_memory",
    "max_context", "max_batch", "InferenceSpeed", "inference_speed",
    # logs and diagnosis
    "TrainingLog", "read_log", "Diagnosis", "Finding", "diagnose",
    # validators for users' own pydantic models
    "FitsOn", "ParamsNear", "MaxParams", "TokensPerParam", "DivisibleStep", "check",
    # errors
    "ConfigFileError", "ScaleplanError", "UnknownNameError",
}


def test_all_is_pinned() -> None:
    assert set(scaleplan.__all__) == EXPECTED
    assert len(scaleplan.__all__) == len(EXPECTED)  # no duplicates


def test_every_exported_name_exists_and_nothing_else_is_public() -> None:
    for name in scaleplan.__all__:
        assert hasattr(scaleplan, name), name
    public = {n for n in vars(scaleplan) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(scaleplan, n)).__name__ == "module"}
    assert public - modules <= EXPECTED  # names load lazily: the loaded ones, nothing else
    assert set(dir(scaleplan)) == EXPECTED | {"__version__"}
    with pytest.raises(AttributeError, match="has no attribute 'GPTconfig'"):
        scaleplan.GPTconfig  # noqa: B018


def test_lazy_map_and_type_checking_imports_agree() -> None:
    # the TYPE_CHECKING imports (what type checkers see) must name exactly what __getattr__ loads
    tree = ast.parse(inspect.getsource(scaleplan))
    imported = {(node.module, alias.name) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
                and node.module.startswith("scaleplan.") for alias in node.names}
    lazy = {(f"scaleplan.{module}", name)
            for module, names in scaleplan._EXPORTS.items() for name in names}
    assert imported == lazy


def test_import_is_light() -> None:
    heavy = ("torch", "sympy", "matplotlib", "pandas", "scipy", "numpy", "pydantic",
             "scaleplan.model.config")
    code = (f"import sys, scaleplan; print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == ""


def test_using_the_planner_keeps_torch_and_sympy_out() -> None:
    code = ("import sys, scaleplan as sp; sp.plan(sp.GPTConfig.preset('gpt2'), 'RTX 4070'); "
            "print(','.join(m for m in ('torch', 'sympy', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == ""


def test_the_readme_plan_imports_no_numpy() -> None:
    # The cold `scaleplan plan` (README's default) stays under 0.3 s by never importing numpy
    # (about 0.11 s of it): benchmarks/bench_plan_latency.py times it; this pins the cause.
    code = ("import sys, contextlib, io; from scaleplan.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): status = main(['plan'])\n"
            "print(status, ','.join(m for m in ('numpy', 'scipy', 'torch', 'sympy') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "0"


def _all_submodules() -> list[str]:
    import pkgutil

    # __main__ runs the command line when imported: not a module to import here
    return [m.name for m in pkgutil.walk_packages(scaleplan.__path__, "scaleplan.")
            if m.name != "scaleplan.__main__"]


def test_no_module_shares_a_name_with_a_public_name() -> None:
    # a submodule named like a public function shadows it once imported: importing
    # scaleplan.diagnose (the module) used to replace scaleplan.diagnose (the function)
    modules = _all_submodules()
    assert "scaleplan.memory.training" in modules and "scaleplan.reference.model" in modules
    clashes = sorted(m for m in modules if m.rsplit(".", 1)[-1] in EXPECTED)
    assert clashes == []


def test_public_names_survive_importing_every_submodule() -> None:
    # In a fresh interpreter: the star import, then every submodule (the reference model's only
    # when torch is there), then each public name must still be the function or class.
    code = f"""
import importlib, importlib.util
from scaleplan import *
import scaleplan
torch = importlib.util.find_spec("torch") is not None
for name in {_all_submodules()!r}:
    if torch or not name.startswith("scaleplan.reference"):
        importlib.import_module(name)
bad = [n for n in scaleplan.__all__ if type(getattr(scaleplan, n)).__name__ == "module"
       or getattr(scaleplan, n) is not globals()[n]]
print(bad)
cfg = GPTConfig.preset("gpt2")
print(len(sweep(base=cfg, n_layer=[12], n_embd=[768], micro_batch_size=[1], seq_len=[1024],
                gpus=["RTX 4070"])))
log = read_log("t.log", text="step 100: train loss 3.5, val loss 3.6\\n")
print(type(diagnose(config=cfg, log=log)).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[]", "1", "Diagnosis"]


def _models_reachable_from_the_public_api() -> set[type]:
    """Every pydantic model exported, and every model their fields hold (a Plan's Remedy, a
    TrainingLog's LogRecord, ...), since users read those fields too."""
    import typing

    from pydantic import BaseModel

    def inner(annotation: object) -> list[object]:
        args = typing.get_args(annotation)
        return [annotation, *args, *(x for a in args for x in inner(a)[1:])]

    seen: set[type] = set()
    todo = [obj for name in scaleplan.__all__ if inspect.isclass(obj := getattr(scaleplan, name))
            and issubclass(obj, BaseModel)]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            todo += [t for t in inner(field.annotation)
                     if inspect.isclass(t) and issubclass(t, BaseModel)]
    return seen


def test_every_field_of_every_public_model_is_described() -> None:
    # The API reference and model_json_schema() show each field's description: a sentence of
    # its own (3 words or more, ending with a full stop or a parenthesis), not the field's name
    # again. Issue 21 did it for Plan; Throughput, TrainingTime, Diagnosis, TrainingLog,
    # LogRecord, Recommendation, TrainingConfig and NanoGPTRun had 60 fields without one.
    models = _models_reachable_from_the_public_api()
    assert {"Plan", "Remedy", "LogRecord", "Recommendation", "MemoryBreakdown"} <= {
        m.__name__ for m in models}
    bare = []
    for model in models:
        for name, field in model.model_json_schema()["properties"].items():
            text = field.get("description", "")
            if (len(text.split()) < 3 or not text.endswith((".", ")"))
                    or text.lower().rstrip(".") == name.replace("_", " ")):
                bare.append(f"{model.__name__}.{name}")
    assert sorted(bare) == []
