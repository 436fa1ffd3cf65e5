"""The torch backend: runs memslo's offloading schedules (`sim.core.offload_plan.OffloadPlan`) on a real model.

Modules: `weights` (random weights of a `ModelSpec`, one flat buffer per layer, pinned host masters),
`kv` (padded KV cache, per-iteration inputs and masks), `model` (Llama/OPT layers in plain torch),
`streams` (compute and copy streams on CUDA, or emulated on the host), `executor` (`OffloadExecutor`),
`timing` (CUDA-event / perf_counter timing, provenance, CSV), `profile` and `run` (the two commands):

    python -m backend.profile --model llama-2-7b --out DIR      # layer times, copy bandwidth, micro-batches
    python -m backend.run scenarios/backend_smoke.yaml          # fixed-batch experiments -> iterations.csv

Everything runs on the CPU too (fp32, synchronous host copies, perf_counter spans), so the logic is tested
without a GPU; GPU-only tests carry the ``gpu`` marker. `sim` never imports this package.
"""
