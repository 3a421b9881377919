"""One-line command-line errors for ``dm-lightning``.

jsonargparse answers every bad argument with ~48 lines of usage, a tip and the error (and
names a YAML file it failed to read ``<unicode string>``). :class:`OneLineErrorParser`
instead raises a :class:`~dm_lightning.errors.ConfigError` whose message fits on one line and
names the file and line (a YAML error) or the key, the value and what was expected; the CLI's
``main`` prints it as ``dm-lightning: error: ...`` and exits 2. ``--help`` and
``--print_config`` are untouched (they exit through ``parser.exit``, not ``error``).
:func:`user_error` and :func:`user_message` find the user's error behind whatever a run
raised and give its one line.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from dm_lightning.errors import ConfigError, DMLightningError, last_error

_NOT_ACCEPTED = re.compile(r"(Subcommand|Group) '([\w.]+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (--[^\s=]+)")
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$', re.S)


def _in_chain(error: BaseException | None, kind: type) -> Any:
    """The first exception of type ``kind`` in ``error``'s cause/context chain, or None."""
    while error is not None:
        if isinstance(error, kind):
            return error
        error = error.__cause__ or error.__context__
    return None


def yaml_error_message(path: str | None, error: yaml.MarkedYAMLError) -> str:
    """One line for YAML that does not parse: the file ``path`` (None: a value given on the
    command line), 1-based line and column, what YAML found, and a hint when the character
    there is a tab."""
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = " ".join(str(error.problem or error.context or "not valid YAML").split())
    what = f"config file {path}" if path is not None else "a YAML value on the command line"
    text = f"{what}: not valid YAML{where}: {problem}"
    context = error.context_mark
    if error.context and context is not None and mark is not None and context.line != mark.line:
        text += f" ({' '.join(error.context.split())} at line {context.line + 1})"
    if mark is not None and path is not None:
        try:
            with open(path, encoding="utf-8", errors="replace") as stream:
                lines = stream.read().splitlines()
            if mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
                text += " (a tab: YAML indents with spaces only)"
        except OSError:
            pass
    return text


def _reason(reason: str) -> str:
    """jsonargparse's reason for refusing a value, shortened to what was given
    and what was expected (its Union messages list every subtype tried and a namespace)."""
    in_class = re.search(r"Problem with given class_path '([^']+)': (.*)", reason)
    if in_class is not None:
        class_path, reason = in_class.groups()
        option = re.search(r"Option '([^']+)' is not accepted", reason)
        if option is not None:
            return f"{class_path} has no option '{option.group(1)}'"
        inner = _PARSER_KEY.match(reason)
        if inner is not None:
            return f"init_args.{inner.group(1)} of {class_path}: {_reason(inner.group(2))}"
    expected = [t for t in re.findall(r"Expected a <class '([\w.]+)'>|Expected a (\w+)", reason)]
    types = [a or b for a, b in expected if (a or b) != "NoneType"]
    given = re.search(r"Given value: (.*?)(?: Given value type:|$)", reason) or re.search(
        r"Got value: (.*?)$", reason
    )
    if types and given is not None:
        return f"expected {' or '.join(types)}, got '{given.group(1).strip()}'"
    return reason


class _YAMLError(ConfigError):
    """A YAML parse error on its way to :meth:`OneLineErrorParser.parse_path`, which knows
    the file."""

    def __init__(self, message: str, marked: yaml.MarkedYAMLError) -> None:
        super().__init__(message)
        self.marked = marked


class OneLineErrorParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one-line :class:`ConfigError`s (see the module
    docstring). Parsers jsonargparse builds with ``exit_on_error=False`` for its own
    tries keep raising ``ArgumentError`` as before."""

    def parse_path(self, cfg_path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().parse_path(cfg_path, *args, **kwargs)
        except _YAMLError as err:
            # jsonargparse reads nested config files with the working directory set to the
            # parent file's folder, so abspath names the file that was actually read.
            path = os.path.abspath(os.fspath(cfg_path))
            raise ConfigError(yaml_error_message(path, err.marked)) from None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        found = _in_chain(ex, DMLightningError)
        if found is not None:
            raise found
        marked = _in_chain(ex, yaml.MarkedYAMLError)
        if marked is not None:
            # parse_path (a file) adds the file's name; a YAML string keeps this message.
            raise _YAMLError(yaml_error_message(None, marked), marked)
        raise ConfigError(self.one_line(message))

    def one_line(self, message: str) -> str:
        """``message`` of jsonargparse as one line naming the key, the value and what was
        expected, with a pointer to ``--help``."""
        command = self.prog.replace(" [options]", "")
        help_hint = f"{command} --help lists the options"
        known = _NOT_ACCEPTED.search(message) or _UNRECOGNIZED.search(message)
        if known is not None:
            key = known.group(known.lastindex or 1).lstrip("-")
            if known.re is _NOT_ACCEPTED and known.group(1) == "Group":
                key = f"{known.group(2)}.{key}"
            elif known.re is _NOT_ACCEPTED:
                help_hint = f"{command} {known.group(2)} --help lists the options"
            close = difflib.get_close_matches(key, self._known_keys(), n=1)
            guess = f"; did you mean '{close[0]}'?" if close else ""
            where = "(from a --config file or the command line)"
            return f"unknown option '{key}' {where}{guess} ({help_hint})"
        keyed = _PARSER_KEY.match(message.strip())
        if keyed is not None:
            key, reason = keyed.groups()
            message = f"--{key}: {_reason(' '.join(reason.split()))}"
        text = " ".join(message.split())
        text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
        return f"{text} ({help_hint})"

    def _known_keys(self) -> list[str]:
        """Keys this parser (or its subcommand parsers) accepts, for a did-you-mean hint."""
        keys = [a.dest for a in self._actions if a.dest]
        subcommands = getattr(self, "_subcommands_action", None)
        for parser in getattr(subcommands, "_name_parser_map", {}).values():
            keys += [a.dest for a in parser._actions if a.dest]
        return keys


def check_trainer_config(trainer: Any) -> None:
    """Start-up checks of a subcommand's ``trainer`` config (a jsonargparse namespace) that
    Lightning would only fail on with a traceback, or after building the model: the
    accelerator is on this machine, and each logger's ``save_dir`` can be created.
    Creates nothing.

    Raises:
        ConfigError: naming the key, the value and what is available or wrong.
    """
    if trainer is None:
        return
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str):
        check_accelerator(accelerator)
    loggers = trainer.get("logger")
    for index, logger in enumerate(loggers if isinstance(loggers, list) else [loggers]):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        save_dir = init_args.get("save_dir") if init_args is not None else None
        if save_dir:
            key = "trainer.logger" + (f"[{index}]" if isinstance(loggers, list) else "")
            check_creatable_folder(str(save_dir), f"{key}.init_args.save_dir")


def available_accelerators() -> list[str]:
    """The Lightning accelerator names usable on this machine (``cpu`` always)."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    found = ["cpu"]
    found += ["cuda", "gpu"] if CUDAAccelerator.is_available() else []
    found += ["mps"] + ([] if "gpu" in found else ["gpu"]) if MPSAccelerator.is_available() else []
    found += ["tpu"] if XLAAccelerator.is_available() else []
    return found


def check_accelerator(name: str) -> None:
    """Raise :class:`ConfigError` when ``trainer.accelerator`` ``name`` (gpu, cuda, mps, tpu)
    is not on this machine; ``auto``, ``cpu`` and other names are left to Lightning."""
    if name.lower() not in ("gpu", "cuda", "mps", "tpu"):
        return
    available = available_accelerators()
    if name.lower() not in available:
        raise ConfigError(
            f"trainer.accelerator: {name!r} is not available on this machine (no such device "
            f"or driver visible to torch); available: {', '.join(available)} (or auto)"
        )


def check_creatable_folder(folder: str, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``folder`` cannot be created: a part of
    its path is a file, or its nearest existing parent is not writable. Creates nothing."""
    path = os.path.abspath(os.path.expanduser(folder))
    if "://" in folder:  # an object store: left to its library
        return
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{key}: {folder} cannot be created: {probe} is a file, not a folder")
    if probe != path and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {folder} cannot be created: {probe} is not writable")
    if probe == path and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {folder} is not writable")


def lightning_error(error: BaseException) -> ConfigError | None:
    """Lightning's ``MisconfigurationException`` (a trainer option that cannot work here,
    raised while the Trainer is built), as a one-line :class:`ConfigError`; else None."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    found = _in_chain(error, MisconfigurationException)
    if found is None:
        return None
    return ConfigError(f"trainer: {' '.join(str(found).split())}")


def user_error(error: BaseException) -> DMLightningError | None:
    """The :class:`DMLightningError` behind ``error``: in its chain, or buried as text in a
    jsonargparse instantiation error (then recovered from :func:`last_error`)."""
    texts = []
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DMLightningError):
            return seen
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    last = last_error()
    if last is not None and any(str(last) in text for text in texts):
        return last
    return None


def user_message(error: DMLightningError) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker, only the
    original message, without the worker's traceback text torch puts in front of it."""
    text = str(error)
    marker = f"{type(error).__module__}.{type(error).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()
