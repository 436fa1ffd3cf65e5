"""The roofline cost model: each operator group takes the longer of its compute and its memory traffic."""

from __future__ import annotations

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec


class RooflineCostModel:
    """Per-operator-group roofline: each group takes max(FLOPs / (peak·eff), bytes / (HBM·eff)) plus a
    per-kernel overhead. GEMMs add ``overlap_loss`` x the smaller of the two terms: near the knee a real
    kernel neither streams weights at full bandwidth nor computes at full rate (0 gives the textbook
    roofline; 0.5 halves the worst-case error against the measured H100 and A100 data). Groups: the four weight GEMMs (QKV, O, up/gate, down), the element-wise kernels
    (norms, RoPE, activation, residual add) and attention (prefill: FLOP-bound flash attention; decode:
    reading the KV cache).

    The efficiencies are what calibration fits; the defaults land near real H100 timings of Llama-2
    shapes (tests/test_cost.py checks them against ../shared/data/measurements/vidur).
    """

    def __init__(self, model: ModelSpec, hw: HardwareSpec, *, compute_efficiency: float = 0.8,
                 memory_efficiency: float = 0.9, elementwise_efficiency: float = 0.5,
                 attention_efficiency: float = 0.5, kernel_overhead_s: float | None = None,
                 iteration_overhead_s: float = 1e-3, overlap_loss: float = 0.5) -> None:
        for name, v in (("compute_efficiency", compute_efficiency), ("memory_efficiency", memory_efficiency),
                        ("elementwise_efficiency", elementwise_efficiency),
                        ("attention_efficiency", attention_efficiency)):
            if not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        self.model, self.hw = model, hw
        self.compute_efficiency = compute_efficiency
        self.memory_efficiency = memory_efficiency
        self.elementwise_efficiency = elementwise_efficiency
        self.attention_efficiency = attention_efficiency
        self.kernel_overhead_s = hw.kernel_overhead_s if kernel_overhead_s is None else kernel_overhead_s
        self.iteration_overhead_s = iteration_overhead_s
        if not 0 <= overlap_loss <= 1:
            raise ValueError(f"overlap_loss must be in [0, 1], got {overlap_loss}")
        self.overlap_loss = overlap_loss
        m, dt = model, model.dtype_bytes
        self._flops = hw.peak_flops * compute_efficiency
        self._bw = hw.hbm_bytes_per_s * memory_efficiency
        # (weight params, activation in+out elements per token) of each GEMM
        inter_out = m.intermediate_size * (2 if m.gated_mlp else 1)
        self._gemms = (
            (m.qkv_params, m.hidden_size + m.q_dim + 2 * m.kv_dim),
            (m.o_params, m.q_dim + m.hidden_size),
            (m.up_params, m.hidden_size + inter_out),
            (m.down_params, m.intermediate_size + m.hidden_size),
        )
        # element-wise bytes per token: two norms (read+write), RoPE on q and k (read+write), activation
        # (read gate/up, write one), one unfused residual add (read two, write one)
        act_reads = inter_out
        self._elem_bytes_per_token = dt * (4 * m.hidden_size + 2 * (m.q_dim + m.kv_dim)
                                           + act_reads + m.intermediate_size + 3 * m.hidden_size)
        self._elem_kernels = 5
        self._elem_bw = hw.hbm_bytes_per_s * elementwise_efficiency
        self._attn_flops = hw.peak_flops * attention_efficiency
        self._kv_bytes = m.kv_bytes_per_token_per_layer
        self._pair_flops = m.attn_flops_per_pair
        self._dt = dt

    # --- pieces, exposed for calibration and tests ---------------------------------------------------
    def gemm_time(self, tokens: int) -> float:
        """The layer's four weight GEMMs for ``tokens`` tokens."""
        t, dt, ko, beta = 0.0, self._dt, self.kernel_overhead_s, self.overlap_loss
        for params, act in self._gemms:
            f = 2.0 * params * tokens / self._flops
            b = (params + tokens * act) * dt / self._bw
            t += (f + beta * b if f > b else b + beta * f) + ko
        return t

    def elementwise_time(self, tokens: int) -> float:
        return tokens * self._elem_bytes_per_token / self._elem_bw + self._elem_kernels * self.kernel_overhead_s

    def linear_time(self, tokens: int) -> float:
        """Everything in a layer except attention (what Vidur's ``linear_ops`` profiles measure)."""
        return self.gemm_time(tokens) + self.elementwise_time(tokens)

    def attention_time(self, shape: BatchShape) -> float:
        t = 0.0
        if shape.prefill_seqs:
            flops = self._pair_flops * shape.prefill_attn_pairs
            nbytes = shape.prefill_kv_tokens * self._kv_bytes + 2 * shape.prefill_tokens * self.model.q_dim * self._dt
            t += max(flops / self._attn_flops, nbytes / self._bw) + self.kernel_overhead_s
        if shape.decode_tokens:
            flops = self._pair_flops * shape.decode_ctx_sum
            nbytes = shape.decode_ctx_sum * self._kv_bytes
            t += max(flops / self._attn_flops, nbytes / self._bw) + self.kernel_overhead_s
        return t

    # --- CostModel ----------------------------------------------------------------------------------
    def layer_time(self, shape: BatchShape) -> float:
        tokens = shape.prefill_tokens + shape.decode_tokens
        return self.linear_time(tokens) + self.attention_time(shape)

    def fixed_time(self, shape: BatchShape) -> float:
        m, dt = self.model, self._dt
        seqs = shape.prefill_seqs + shape.decode_tokens
        tokens = shape.prefill_tokens + shape.decode_tokens
        head_params = m.vocab_size * m.hidden_size
        lm_head = max(2.0 * head_params * seqs / self._flops,
                      (head_params + seqs * (m.hidden_size + m.vocab_size)) * dt / self._bw)
        embed_norm = tokens * m.hidden_size * dt * 3 / self._elem_bw
        sampling = seqs * m.vocab_size * 4 / self._elem_bw  # fp32 logits read by softmax/sampling
        return self.iteration_overhead_s + lm_head + embed_norm + sampling + 4 * self.kernel_overhead_s

    def iteration_compute_time(self, shape: BatchShape, num_layers: int | None = None) -> float:
        """All layers resident: ``num_layers`` x layer time + fixed time."""
        n = self.model.num_layers if num_layers is None else num_layers
        return n * self.layer_time(shape) + self.fixed_time(shape)

    def params(self) -> dict[str, float]:
        return {"compute_efficiency": self.compute_efficiency, "memory_efficiency": self.memory_efficiency,
                "elementwise_efficiency": self.elementwise_efficiency,
                "attention_efficiency": self.attention_efficiency, "kernel_overhead_s": self.kernel_overhead_s,
                "iteration_overhead_s": self.iteration_overhead_s, "overlap_loss": self.overlap_loss}
