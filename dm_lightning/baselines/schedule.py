"""SD-2's noise schedule, once for the baselines that read it (docs/method.md §8): E2E-FT's
v -> x0 at the last timestep, Marigold's training and DDIM sampling."""

from __future__ import annotations

from typing import Any

from diffusers import DDPMScheduler

# SD-2's noise schedule (its scheduler/scheduler_config.json), written out so a folder without
# one (the tiny test model) trains on the same; DDIM's extras as SD-2's and Marigold's.
SD2_SCHEDULE: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    clip_sample=False,
    steps_offset=1,
    # "leading" spacing starts a 1-step DDIM at timestep 1 on pure noise (the flaw E2E-FT,
    # Garcia et al., found); Marigold v1.1 trains and samples with "trailing" (999 first).
    timestep_spacing="trailing",
)


def sd2_noise_schedule() -> DDPMScheduler:
    """SD-2's training noise schedule (:data:`SD2_SCHEDULE`): 1000 steps, ``scaled_linear``
    betas from 0.00085 to 0.012, v-prediction."""
    return DDPMScheduler(**SD2_SCHEDULE)
