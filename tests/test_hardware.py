"""GPU database: published peaks, tolerant lookup, flags and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleplan.compute import hardware
from scaleplan.compute.hardware import GPUSpec, gpu, gpus, register_gpu
from scaleplan.errors import UnknownNameError

GIB = 2**30


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        # Dense bf16/fp16 with fp32 accumulate, as listed in issue 5 / design.md from vendor sheets:
        ("RTX 4090", "bf16", 165.2),  # Ada whitepaper, Appendix A
        ("RTX 3090", "bf16", 71.0),  # GA102 whitepaper, Appendix A
        ("RTX 5090", "bf16", 209.5),  # RTX Blackwell whitepaper
        ("H100 SXM", "bf16", 989.0),  # H100 datasheet 1,979 sparse / 2
        ("H100 PCIe", "bf16", 756.0),  # H100 datasheet 1,513 sparse / 2
        ("A100 SXM 80GB", "bf16", 312.0),  # A100 datasheet
        ("A100 PCIe 40GB", "fp16", 312.0),
        ("H200", "bf16", 989.0),
        ("B200", "bf16", 2250.0),
        ("L4", "bf16", 121.0),
        ("L40S", "bf16", 362.0),
        ("MI300X", "bf16", 1307.4),  # AMD MI300X datasheet, dense matrix
        ("T4", "fp16", 65.0),  # T4 datasheet, mixed precision
        ("V100 SXM2 32GB", "fp16", 125.0),
    ],
)
def test_published_dense_peaks(name: str, dtype: str, tflops: float) -> None:
    assert gpu(name).peak_flops(dtype) == pytest.approx(tflops * 1e12, rel=1e-12)


def test_rtx_4070_peak_is_derived_from_sms_and_clock() -> None:
    # No NVIDIA sheet gives it: 46 SMs x 2.475 GHz x 512 FLOP/clk/SM = 58.2912 TFLOP/s.
    spec = gpu("RTX 4070")
    assert spec.peak_flops("bf16") == pytest.approx(46 * 2.475e9 * 512, rel=1e-12)
    assert spec.peak["bf16"].source.startswith("derived: 46 SMs x 2.475 GHz")
    assert spec.peak["bf16"].accumulate == "fp32"


def test_marketed_gb_is_gib_and_usable_memory_is_what_nvidia_smi_reports() -> None:
    spec = gpu("RTX 4070")
    assert spec.memory_bytes == 12 * GIB
    assert spec.usable_memory_bytes == 12282 * 2**20  # nvidia-smi "12282MiB"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("rtx4070", "RTX 4070"),
        ("RTX 4070", "RTX 4070"),
        ("4070", "RTX 4070"),
        ("NVIDIA GeForce RTX 4070", "RTX 4070"),
        ("nvidia geforce rtx 4070 ti", "RTX 4070 Ti"),
        ("a100-80gb", "A100 SXM 80GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2 16GB"),
        ("NVIDIA A10G", "A10G"),
        ("AMD Instinct MI300X", "MI300X"),
        ("gb200", "GB200"),
    ],
)
def test_lookup_is_tolerant(query: str, name: str) -> None:
    assert gpu(query).name == name


def test_every_gpu_the_issue_lists_is_there() -> None:
    names = {g.name for g in gpus()}
    wanted = {"RTX 3060", "RTX 3080", "RTX 3090", "RTX 4060 Ti 16GB", "RTX 4070", "RTX 4070 Ti",
              "RTX 4080", "RTX 4090", "RTX 5090", "T4", "A10", "A10G", "L4", "L40S",
              "A100 SXM 40GB", "A100 SXM 80GB", "A100 PCIe 40GB", "A100 PCIe 80GB", "H100 SXM",
              "H100 PCIe", "H100 NVL", "H200", "B200", "GB200", "MI250X", "MI300X", "MI325X"}
    assert wanted <= names
    assert any(n.startswith("V100") for n in names)


def test_every_figure_has_a_source() -> None:
    for spec in gpus():
        assert all(p.source for p in spec.peak.values()), spec.name
        assert spec.sources.get("memory"), spec.name


def test_ambiguous_family_name_lists_the_variants() -> None:
    with pytest.raises(ValueError, match=r"'A100' fits several GPUs: .*'A100 SXM 80GB'"):
        gpu("A100")


def test_memory_bytes_picks_the_variant_torch_cannot_name() -> None:
    # torch reports both RTX 4060 Ti cards as "NVIDIA GeForce RTX 4060 Ti".
    assert gpu("NVIDIA GeForce RTX 4060 Ti", memory_bytes=16 * GIB - 300 * 2**20).memory_bytes \
        == 16 * GIB


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown GPU 'RTX 4079'.*did you mean"):
        gpu("RTX 4079")


def test_fp8_on_a100_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"dtype='fp8': the A100 SXM 80GB has no dense fp8 peak"):
        gpu("A100 SXM 80GB").peak_flops("fp8")


def test_bf16_on_t4_says_to_plan_fp16() -> None:
    with pytest.raises(ValueError, match="no bf16 tensor cores: plan fp16"):
        gpu("T4").peak_flops("bf16")
    assert not gpu("V100 SXM2 16GB").has_bf16_tensor_cores


def test_unknown_dtype_name_is_rejected() -> None:
    with pytest.raises(UnknownNameError, match="unknown dtype 'int3'"):
        gpu("RTX 4090").peak_flops("int3")


def test_dtype_aliases() -> None:
    spec = gpu("RTX 4090")
    assert spec.peak_flops("torch.bfloat16") == spec.peak_flops("bf16-mixed") == 165.2e12


def test_inductor_flag_follows_the_68_sm_rule() -> None:
    # torch/_inductor/utils.py is_big_gpu: min_sms = 68 (an RTX 3080 has exactly 68).
    assert gpu("RTX 4070").below_inductor_autotune_threshold  # 46 SMs
    assert gpu("L4").below_inductor_autotune_threshold  # 58 SMs
    assert not gpu("RTX 3080").below_inductor_autotune_threshold  # 68 SMs
    assert not gpu("H100 SXM").below_inductor_autotune_threshold
    assert not gpu("MI300X").below_inductor_autotune_threshold  # ROCm: rule does not apply


def test_spec_round_trips_through_json() -> None:
    spec = gpu("H100 SXM")
    assert GPUSpec.model_validate_json(spec.model_dump_json()) == spec


def test_register_gpu_from_a_file(tmp_path: Path) -> None:
    record = {"name": "Lab Card X", "aliases": ["labx"], "memory_gib": 20,
              "memory_bandwidth_gb_s": 500, "sm_count": 50, "has_bf16_tensor_cores": True,
              "peak_tflops": {"bf16": {"tflops": 50, "accumulate": "fp32", "source": "bench"}},
              "sources": {"memory": "vendor"}}
    path = tmp_path / "mygpus.json"
    path.write_text(json.dumps({"gpus": [record]}))
    try:
        (spec,) = register_gpu(path)
        assert gpu("LABX") == spec
        assert spec.memory_bytes == 20 * GIB and spec.peak_flops("bf16") == 50e12
    finally:
        hardware._REGISTERED.pop("Lab Card X", None)


def test_register_gpu_rejects_incomplete_records() -> None:
    with pytest.raises(ValueError, match="lacks field 'peak_tflops'"):
        register_gpu({"name": "x", "memory_gib": 1, "memory_bandwidth_gb_s": 1, "sm_count": 1,
                      "has_bf16_tensor_cores": False})
