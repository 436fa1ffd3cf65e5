"""The backend on a CUDA GPU (deselect with ``-m "not gpu"`` where there is none)."""

from __future__ import annotations

import pytest
import torch

from backend import profile, run
from backend.executor import OffloadExecutor, host_alias
from backend.timing import read_csv
from backend.weights import ModelWeights
from sim.config.fixed_batch import read_rows
from sim.core.offload_plan import OffloadPlan

from .backend_cases import ROOT, SMOKE, L, check_dependencies, plan_sequences, prefill_then_decode, small_spec

pytestmark = pytest.mark.gpu

SEQS = plan_sequences()
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def weights() -> ModelWeights:
    return ModelWeights(small_spec(), CUDA, seed=3)  # bf16, pinned host masters


@pytest.fixture(scope="module")
def reference(weights):
    return prefill_then_decode(weights, [OffloadPlan.resident(L)] * max(len(s) for s in SEQS.values()))[0]


def test_weights_live_in_pinned_host_memory(weights):
    assert weights.dtype == torch.bfloat16
    assert all(t.is_pinned() for t in weights.host_layers)


@pytest.mark.parametrize("name", list(SEQS))
def test_offloaded_logits_equal_resident_on_cuda(weights, reference, name):
    """bf16 tolerance: the same kernels on the same bits should agree exactly, but a flexgen split runs
    other GEMM shapes (cuBLAS may pick other kernels and reduction orders), so allow bf16 rounding."""
    outs, recs = prefill_then_decode(weights, SEQS[name])
    for got, want in zip(outs, reference):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)
    for rec in recs:
        check_dependencies(rec, eps=1e-6)  # CUDA event timestamps have about 0.5 us resolution


def test_uva_reads_pinned_memory_without_a_copy(weights, reference):
    host = weights.host_layers[0]
    alias = host_alias(host, CUDA)
    assert alias.is_cuda and alias.data_ptr() == host.data_ptr()
    assert torch.equal(alias.cpu(), host)
    outs, _ = prefill_then_decode(weights, [OffloadPlan.uva(L, range(L))] * 3, uva_impl="zero_copy")
    for got, want in zip(outs, reference):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)


def test_uva_copy_fallback_matches(weights, reference):
    outs, _ = prefill_then_decode(weights, [OffloadPlan.uva(L, range(3), 0.5)] * 3, uva_impl="copy")
    for got, want in zip(outs, reference):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)


def test_no_host_sync_inside_the_iteration(weights):
    """With recording off the executor never waits on the GPU: it returns before the work is done."""
    from backend.kv import PaddedKVCache, StepInputs
    ex = OffloadExecutor(weights, OffloadPlan.deepspeed(L), record=False)
    kv = PaddedKVCache(weights.spec, 1, 8, CUDA, weights.dtype)
    inp = StepInputs.build([[1]], [0], CUDA)
    ex.step(kv, inp)
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # keep the compute stream busy for a while
    logits, rec = ex.step(kv, inp)
    assert rec is None and not torch.cuda.current_stream().query()
    torch.cuda.synchronize()


def test_pinned_h2d_bandwidth(capsys):
    size = 256 << 20
    host = torch.randint(1, 255, (size,), dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(size, dtype=torch.uint8, device=CUDA)
    t = profile.time_copy(dev, host, CUDA, repeats=10, warmup=2, load=None, expected_s=0.0)
    gbps = size / sorted(t)[len(t) // 2] / 1e9
    with capsys.disabled():  # shown even without -s
        print(f"\npinned H2D bandwidth ({torch.cuda.get_device_name()}): {gbps:.1f} GB/s for 256 MiB copies")
    assert gbps > 1.0
    assert torch.equal(dev[:4096].cpu(), host[:4096])


def test_profile_quick_on_cuda(tmp_path):
    profile.main(["--model", str(ROOT / "scenarios" / "backend_smoke_model.json"), "--out", str(tmp_path),
                  "--quick"])
    prov, copies = read_csv(tmp_path / "copy_bandwidth.csv")
    assert prov["device"] == "cuda" and prov["gpu"] != "none"
    assert {r["memory"] for r in copies} == {"pinned", "pageable"}
    assert all(float(r["seconds"]) > 0 for r in copies)


def test_run_smoke_on_cuda(tmp_path):
    out = run.main([str(SMOKE), "--out", str(tmp_path), "--repeats", "3", "--warmup", "2"])
    rows = read_rows(out / "iterations.csv")
    assert rows and all(r.iteration_s > 0 for r in rows)
