"""What a model card says about each method dm_lightning trains: DepthMaster and the baselines
of docs/method.md §8, keyed by the ``method`` an export records in ``dm_lightning.json``
(DepthMaster's exports record none)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodCard:
    """The card's words for one method.

    Attributes:
        name: the method's name as its authors spell it (``E2E-FT``).
        slug: its part of hub repository names and tags (``e2e-ft``).
        summary: one sentence on what the network does (Markdown).
        paper: authors, title, venue and link (Markdown), for the card's citation.
        single_step: whether inference is one U-Net pass (a tag).
        task: the dm_lightning task class that loads its exports (``dm_lightning.E2EFT``).
    """

    name: str
    slug: str
    summary: str
    paper: str
    single_step: bool
    task: str


DEPTHMASTER_PAPER = "https://arxiv.org/abs/2501.02576"

DEPTHMASTER = MethodCard(
    name="DepthMaster",
    slug="depthmaster",
    summary="a Stable Diffusion 2 U-Net and VAE turned into a deterministic one-step depth "
    "estimator (one U-Net pass, no noise, no scheduler)",
    paper="Song et al., *DepthMaster: Taming Diffusion Models for Monocular Depth Estimation*, "
    f"2025, [arXiv:2501.02576]({DEPTHMASTER_PAPER})",
    single_step=True,
    task="dm_lightning.DepthMasterTask",
)

METHODS: dict[str | None, MethodCard] = {
    None: DEPTHMASTER,
    "e2e_ft": MethodCard(
        name="E2E-FT",
        slug="e2e-ft",
        summary="a Stable Diffusion 2 U-Net run once at timestep 999 on no noise, its "
        "v-prediction turned into the depth latent and decoded, fine-tuned end to end through "
        "the decoder with an affine-invariant loss",
        paper="Garcia Martin et al., *Fine-Tuning Image-Conditional Diffusion Models is Easier "
        "than You Think*, WACV 2025, [arXiv:2409.11355](https://arxiv.org/abs/2409.11355)",
        single_step=True,
        task="dm_lightning.E2EFT",
    ),
    "lotus_d": MethodCard(
        name="Lotus-D",
        slug="lotus-d",
        summary="a Stable Diffusion 2 U-Net run once at timestep 999 on the image latent, its "
        "output taken as the depth latent (x0), trained with a detail preserver (a task "
        "switcher that also reconstructs the image)",
        paper="He et al., *Lotus: Diffusion-based Visual Foundation Model for High-quality Dense "
        "Prediction*, ICLR 2025, [arXiv:2409.18124](https://arxiv.org/abs/2409.18124)",
        single_step=True,
        task="dm_lightning.LotusD",
    ),
    "marigold": MethodCard(
        name="Marigold",
        slug="marigold",
        summary="a Stable Diffusion 2 U-Net fine-tuned as a denoiser of the depth latent "
        "conditioned on the image latent (v-prediction), run as a few DDIM steps from noise "
        "with test-time ensembling",
        paper="Ke et al., *Repurposing Diffusion-Based Image Generators for Monocular Depth "
        "Estimation*, CVPR 2024, [arXiv:2312.02145](https://arxiv.org/abs/2312.02145)",
        single_step=False,
        task="dm_lightning.Marigold",
    ),
}


def method_card(method: str | None) -> MethodCard:
    """The :class:`MethodCard` of a recorded ``method`` (None: DepthMaster); an unknown method
    gets a card that names it and the task class ``dm_lightning.json`` records."""
    if method in METHODS:
        return METHODS[method]
    return MethodCard(
        name=str(method),
        slug=str(method).replace("_", "-").lower(),
        summary="a depth estimator trained with dm_lightning",
        paper=f"the {method} method's paper",
        single_step=False,
        task="",
    )
