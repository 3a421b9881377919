"""Upload an export folder to the Hugging Face hub (``tools/push_to_hub.py``).

Repository names must not pass for PolyU-VCLab's unrelated "DepthMaster" (2026, panoramic
metric depth): :func:`check_repo_name` refuses a name that is only "DepthMaster" in any
spelling (``depthmaster``, ``Depth-Master``, ``depthmaster-v2``...) unless forced; the suggested
name is ``<owner>/dm-lightning-depthmaster-<stage>-<target>``
(:func:`~dm_lightning.hub.model_card.model_title`).

The upload is huggingface_hub's own ``HfApi.create_repo`` + ``HfApi.upload_folder``; between
them the card is rewritten with the repository id in its usage snippets. Any failure of the
hub calls (no network, a refused token, a name taken) is one :class:`PushError` line.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from dm_lightning.errors import ConfigError, DMLightningError, MissingPathError
from dm_lightning.hub.model_card import CardChoices, model_title, write_model_card
from dm_lightning.hub.training_facts import read_training_facts

# The card modules (torch, diffusers) are imported only once the hub answered: without a
# network the tool fails in about a second.

REQUIRED_PARTS = ("unet", "vae")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# Names whose only word is "depthmaster" once separators, versions and generic suffixes go.
_GENERIC = re.compile(r"(v?\d+(\.\d+)*|model|weights|hf|official|release|base|large|small)")


class PushError(DMLightningError, RuntimeError):
    """The hub refused or could not be reached; nothing (or not everything) was uploaded."""

    exit_code = 1


def check_export_folder(folder: Path) -> Path:
    """``folder`` if it is an export (``unet/`` and ``vae/``), else
    :class:`~dm_lightning.errors.MissingPathError` naming it and what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(f"export folder {folder} not found")
    missing = [p for p in REQUIRED_PARTS if not (folder / p).is_dir()]
    if missing:
        raise MissingPathError(
            f"{folder} is not a model export: it has no {' or '.join(p + '/' for p in missing)} "
            "(expected the folder written at the end of dm-lightning fit, e.g. "
            "runs/.../version_0/export)"
        )
    return folder


def is_bare_depthmaster(name: str) -> bool:
    """Whether a repository name (without owner) is just "DepthMaster", in any spelling."""
    words = [w for w in re.split(r"[-_.\s]+", name.lower()) if w]
    rest = "".join(w for w in words if not _GENERIC.fullmatch(w))
    return rest == "depthmaster"


def check_repo_name(repo_id: str, force: bool = False) -> str:
    """``repo_id`` if it is ``owner/name`` and not a bare "DepthMaster" name (unless ``force``).

    Raises:
        ConfigError: not ``owner/name``, or a bare "DepthMaster" name without ``force``.
    """
    if not _REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"--repo {repo_id!r}: expected owner/name (a Hugging Face repository id)")
    name = repo_id.split("/", 1)[1]
    if not force and is_bare_depthmaster(name):
        raise ConfigError(
            f"--repo {repo_id}: a bare DepthMaster name would pass for PolyU-VCLab's unrelated "
            "DepthMaster (panoramic metric depth); use a name like "
            f"{repo_id.split('/')[0]}/dm-lightning-depthmaster-stage2-sqrt-disparity, or --force"
        )
    return repo_id


def suggested_repo(folder: Path, owner: str = "<user>") -> str:
    """``<owner>/dm-lightning-depthmaster-<stage>-<target>`` for the export ``folder``."""

    return f"{owner}/{model_title(read_training_facts(Path(folder)))}"


def _unreachable(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it came from) is a failed connection or a timeout: the HTTP
    client's transport errors (httpx ``ConnectError``, ``ConnectTimeout``...) or a
    connection ``OSError`` (refused, reset, a name that does not resolve, a timeout)."""
    while error is not None:
        names = {cls.__name__ for cls in type(error).__mro__}
        if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if names & {"TransportError", "Timeout"}:
            return True
        if any(n.startswith(("Connect", "Timeout")) or n.endswith("Timeout") for n in names):
            return True
        error = error.__cause__ or error.__context__
    return False


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def push_export(
    folder: Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    force: bool = False,
) -> str:
    """Rewrite the card of export ``folder`` for ``repo_id`` and upload the folder.

    Args:
        folder: the export (``unet/``, ``vae/``).
        repo_id: ``owner/name``; created if absent (``private`` then), reused if it exists.
        private: create the repository private.
        token: hub token; default huggingface_hub's (``HF_TOKEN``, ``hf auth login``).
        force: accept a bare "DepthMaster" repository name.

    Returns:
        The URL of the upload commit.

    Raises:
        MissingPathError: ``folder`` is not an export.
        ConfigError: a malformed or bare "DepthMaster" repository name.
        PushError: the hub could not be reached or refused the upload (one line, no traceback).
    """
    from huggingface_hub import HfApi, constants

    folder = check_export_folder(folder)
    check_repo_name(repo_id, force)
    api = HfApi(token=token)
    try:
        # First the repository: a hub that cannot be reached fails here, before the card
        # in the folder is touched.
        api.create_repo(repo_id, private=private, exist_ok=True)

        write_model_card(folder, choices=CardChoices(model_ref=repo_id))
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message="Upload DepthMaster (dm_lightning) export",
        )
    except DMLightningError:
        raise
    except Exception as err:  # every hub failure: network, auth, quota, a name taken
        reason = f"{type(err).__name__}: {_one_line(err)}"
        if _unreachable(err):
            raise PushError(
                f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({reason}); nothing "
                f"was uploaded from {folder} (no network? check HF_ENDPOINT and proxies)"
            ) from err
        raise PushError(
            f"upload of {folder} to {repo_id} at {constants.ENDPOINT} failed ({reason}); "
            "check the repository name and the token (HF_TOKEN or hf auth login)"
        ) from err
    return str(getattr(info, "commit_url", info))
