"""Human-readable text for a Result and for predicted-vs-measured comparisons. Pure functions."""

from __future__ import annotations

from moe.result.record import Result

PHASES = ("attention_s", "gate_s", "dispatch_s", "expert_s", "combine_s", "exposed_comm_s")
DRIFT = 0.1
"""A host-probe difference (moe.hostprobe) beyond which `format_comparison` says so."""


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_summary(r: Result) -> str:
    spec = r.spec
    c, w = spec.get("cluster", {}), spec.get("workload", {})
    lines = [
        f"{spec.get('name', '?')} [{r.backend}] {spec.get('model', {}).get('preset', '?')} on "
        f"{c.get('nodes', '?')} x {c.get('gpus_per_node', '?')} GPUs ({r.machine or c.get('name', '')}), "
        f"{w.get('phase', '?')} {w.get('tokens_per_gpu', '?')} tokens/GPU",
        f"  step time      {_ms(r.step_time_s)}" + (f"   (median of {r.repeats})" if r.repeats > 1 else ""),
        f"  throughput     {r.tokens_per_s:,.0f} tokens/s   ({r.tokens_per_s_per_gpu:,.0f} per GPU)",
        f"  MoE layer      {_ms(r.moe_layer_s)}",
    ]
    for phase in PHASES:
        lines.append(f"    {phase[:-2]:<14}{_ms(getattr(r.breakdown, phase))}")
    busy = r.extra.get("max_link_busy_s")
    lines.append(f"  bottleneck link {r.max_link or '-'}: {_bytes(r.max_link_bytes)} per MoE layer"
                 + (f", busy {busy * 1e3:.3f} ms of {r.moe_layer_s * 1e3:.3f} ms" if busy and r.moe_layer_s else ""))
    util = r.extra.get("link_utilisation")
    if util:
        lines.append("  link utilisation (mean/max over the step): "
                     + ", ".join(f"{kind} {u['mean']:.0%}/{u['max']:.0%}" for kind, u in util.items() if u["max"] > 0))
    lines.append(f"  expert load imbalance {r.expert_load_imbalance:.2f} (max/mean tokens per GPU)"
                 + (f", {r.dropped_tokens} tokens dropped" if r.dropped_tokens else ""))
    lines.append(f"  KV cache {_bytes(r.kv_cache_bytes_per_token)}/token, peak memory "
                 f"{_bytes(r.peak_memory_bytes_per_gpu)}/GPU, wall {r.wall_s:.2f} s")
    return "\n".join(lines)


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; 0 when both are 0, inf when only the measurement is 0."""
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return (predicted - measured) / measured


def compare(predicted: Result, measured: Result) -> list[dict]:
    """Rows of (quantity, predicted, measured, relative error) for step time, MoE layer and phases; and,
    where the profile and the run both timed `moe.hostprobe`'s reference workload, `host_probe_s`: the
    profile's (the host while it was calibrated) against the run's, whose error is how much slower (+) or
    faster (-) the host was calibrated than it ran."""
    rows = [("step_time_s", predicted.step_time_s, measured.step_time_s),
            ("moe_layer_s", predicted.moe_layer_s, measured.moe_layer_s)]
    rows += [(p, getattr(predicted.breakdown, p), getattr(measured.breakdown, p)) for p in PHASES]
    calibrated, ran = predicted.spec.get("cluster", {}).get("host_probe_s"), measured.extra.get("host_probe_s")
    if calibrated and ran:
        rows.append(("host_probe_s", calibrated, ran))
    return [{"quantity": q, "predicted": a, "measured": b, "rel_error": relative_error(a, b)} for q, a, b in rows]


def format_comparison(predicted: Result, measured: Result) -> str:
    head_p, head_m = f"{predicted.backend} (predicted)", f"{measured.backend} (measured)"
    lines = [f"{'quantity':<16}{head_p:>20}{head_m:>20}{'error':>10}"]
    for row in compare(predicted, measured):
        err = row["rel_error"]
        lines.append(f"{row['quantity']:<16}{_ms(row['predicted']):>20}{_ms(row['measured']):>20}"
                     f"{err * 100:>9.1f}%")
        if row["quantity"] == "host_probe_s" and abs(err) > DRIFT:
            side = ("slower", "over") if err > 0 else ("faster", "under")
            lines.append(f"  the host was {side[0]} by {abs(err):.0%} while the profile was calibrated than in "
                         f"this run: host-bound times are {side[1]}-predicted by about as much")
    return "\n".join(lines)
