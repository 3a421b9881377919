"""Where a model path points: a local model folder, or a Hugging Face hub repository fetched
(once) into the HF cache (:func:`resolve_model_path`, which says which a value names)."""

from __future__ import annotations

import re
from pathlib import Path

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.models.depthmaster import EMPTY_PROMPT_FILE
from dm_lightning.models.model_facts import METADATA_FILE

HUB_PREFIX = "hf://"
#: The form of a Hugging Face hub repository id, ``owner/name``.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(
    path_or_id: str | Path, subfolders: tuple[str, ...] = ("vae", "unet")
) -> Path:
    """A local model folder, or a Hugging Face hub repository fetched (once) into the HF cache.

    Which one a value names:

    - ``hf://owner/name`` always names a hub repository;
    - an existing folder is used as it is;
    - otherwise the value is a hub id only if it has the form ``owner/name``, does not start
      with ``.``, ``/`` or ``~``, and its first component (``owner``) is not an existing local
      folder. So ``runs/export`` while ``runs/`` exists is a missing local folder (a typo, or a
      run that has not exported yet), never fetched: write ``hf://runs/export`` for a hub
      repository of that name.

    A :class:`~pathlib.Path` is always a local folder.

    Raises:
        MissingPathError: a local folder that does not exist, or a hub repository that cannot
            be fetched.
        ConfigError: an ``hf://`` value that is not of the form ``hf://owner/name``.
    """
    if isinstance(path_or_id, Path):
        if not path_or_id.expanduser().is_dir():
            raise MissingPathError(f"model folder {path_or_id} not found")
        return path_or_id.expanduser()
    if path_or_id.startswith(HUB_PREFIX):
        repo = path_or_id[len(HUB_PREFIX) :]
        if not HUB_ID.fullmatch(repo):
            raise ConfigError(
                f"model path {path_or_id!r}: expected hf://owner/name (a Hugging Face hub "
                "repository id)"
            )
        return _fetch_from_hub(repo, subfolders)
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise MissingPathError(
            f"model path {path_or_id} is a file; expected a folder with vae/ and unet/"
        )
    first = path_or_id.split("/", 1)[0]
    looks_local = path_or_id.startswith((".", "/", "~")) or not HUB_ID.fullmatch(path_or_id)
    if not looks_local and Path(first).is_dir():
        raise MissingPathError(
            f"model folder {path_or_id} not found; {first}/ exists, so this is taken for a local "
            f"path; use {HUB_PREFIX}{path_or_id} for a hub repository"
        )
    if looks_local:
        raise MissingPathError(
            f"model folder {path_or_id} not found (expected a diffusers folder with vae/ and "
            f"unet/, a hub id like stabilityai/stable-diffusion-2, or {HUB_PREFIX}owner/name)"
        )
    return _fetch_from_hub(path_or_id, subfolders)


def _fetch_from_hub(repo: str, subfolders: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [f"{s}/*" for s in subfolders] + [EMPTY_PROMPT_FILE, METADATA_FILE, "*.json"]
    patterns += ["text_encoder/*", "tokenizer/*"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingPathError(
            f"cannot fetch model {repo!r} from the Hugging Face hub: {reason}"
        ) from err
