"""Which problems a named preset was tuned for, read from its name.

Preset names are ``backbone/task`` (``pixel_hmc/super_resolution``, ``ldm_hmc_opt15/hdr``,
``cm/super_resolution_x4``, ``gmm/latent_hmc``) or a single word for generic settings
(``paper``, ``cpu``). Step sizes follow the likelihood's curvature and the prior's space, so a
preset applied to another backbone or task is a silent mistake; ``preset_mismatch`` names it.
"""

from __future__ import annotations

# backbone prefix -> True: latent prior, False: pixel prior, None: either
_BACKBONE_LATENT: dict[str, bool | None] = {
    "pixel": False,
    "pixel_ula": False,
    "pixel_hmc": False,
    "cm": False,
    "ldm": True,
    "ldm_hmc": True,
    "ldm_hmc_opt5": True,
    "ldm_hmc_opt15": True,
    "ldm_hmc_opt30": True,
    "sd_hmc": True,
    "gmm": None,
}

# the 8 seed tasks (operator names); other task tokens (``ct``, ``natural``) constrain nothing
SEED_TASKS = (
    "super_resolution",
    "inpaint_box",
    "inpaint_random",
    "gaussian_blur",
    "motion_blur",
    "phase_retrieval",
    "nonlinear_blur",
    "hdr",
)


def preset_task(preset: str) -> str | None:
    """The operator name a preset was tuned for, or None where it names no operator."""
    if preset.startswith("gmm"):
        return "matrix"
    if "/" not in preset:
        return None
    token = preset.split("/", 1)[1]
    for task in SEED_TASKS:
        if token == task or token.startswith(task + "_"):
            return task
    return None


def preset_latent(preset: str) -> bool | None:
    """Whether a preset was tuned for a latent (True) or pixel (False) prior; None: either."""
    return _BACKBONE_LATENT.get(preset.split("/", 1)[0]) if "/" in preset else None


def preset_mismatch(preset: str, prior_is_latent: bool, operator_name: str) -> str | None:
    """Why ``preset`` does not fit this prior and operator, or None when it fits."""
    latent = preset_latent(preset)
    if latent is not None and latent != prior_is_latent:
        wanted, got = ("latent", "pixel") if latent else ("pixel", "latent")
        return (
            f"preset {preset!r} is tuned for a {wanted} prior but the prior is a {got} prior; "
            "choose a preset of the prior's backbone (solvers.presets(name) lists them)"
        )
    task = preset_task(preset)
    if task is not None and task != operator_name:
        return (
            f"preset {preset!r} is tuned for the {task!r} operator but the operator is "
            f"{operator_name!r}; choose the preset for {operator_name!r} or pass overrides"
        )
    return None
