"""`Sample`: one GPU's state at an iteration's end, a row of a run's time series (``series_frame``)."""

from __future__ import annotations

from typing import NamedTuple


class Sample(NamedTuple):
    """One GPU's state, sampled at an iteration's end (a row of the run's time series)."""

    time_s: float
    gpu: int
    waiting: int
    running: int
    swapped: int
    kv_used_blocks: int
    kv_total_blocks: int
    weights_bytes: float
    staging_bytes: float
    workspace_bytes: float
    kv_pool_bytes: float
    kv_used_bytes: float
    usable_bytes: float
    host_used_bytes: float
    h2d_bytes_total: float
    d2h_bytes_total: float
    bus_h2d_bytes_total: float
    offloaded_layers: int
    interval: int
    batch_tokens: int
    decode_seqs: int
    iteration_s: float
    group: int  # the pipelined group this GPU serves in (-1: alone)
    stages: int  # pipeline stages of its serving unit
    kv_capacity_tokens: float  # this GPU's share of its unit's KV capacity (summed over GPUs: the cluster's)
    host_weights_bytes: float
    host_kv_bytes: float


SAMPLE_FIELDS = Sample._fields
