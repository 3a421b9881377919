"""Learning-rate schedule of the reference recipe (docs/method.md §3 and §4)."""

from __future__ import annotations


def warmup_exponential_decay(
    step: int, warmup_steps: int = 100, decay_steps: int = 25_000, final_ratio: float = 0.01
) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Linear warm-up ``step / warmup_steps`` over the first ``warmup_steps`` steps, then
    exponential decay ``final_ratio ** ((step - warmup_steps) / (decay_steps - warmup_steps))``
    that reaches ``final_ratio`` at step ``decay_steps`` and stays there.
    """
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps})")
    if step < warmup_steps:
        return step / warmup_steps
    if step >= decay_steps:
        return final_ratio
    return final_ratio ** ((step - warmup_steps) / (decay_steps - warmup_steps))
