"""The Hugging Face Hub side of a model folder: resolving a Hub id to a local snapshot, and the upload
(the model card that goes with it is written by :mod:`sparseshare.card`).

A model folder is the same on disk and on the Hub (see :mod:`sparseshare.model`), so loading a Hub id
is ``snapshot_download`` followed by the local loader, and pushing is ``save_pretrained`` into a
temporary folder followed by one ``upload_folder`` commit.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ModelFolderError, SparseshareError

logger = logging.getLogger(__name__)

# Everything a model folder may hold; nothing else is downloaded (no pickles, no code).
MODEL_FILE_PATTERNS = ["config.json", "vocab.json", "labels.json", "model.safetensors", "masks.safetensors",
                       "routing.json", "README.md", "encoder/*.json", "encoder/*.txt", "encoder/*.model"]


class HubError(SparseshareError, OSError):
    """A failed Hub call (an unreachable endpoint, a refused token, a missing repo or dataset), in one line that
    names what was asked for and why it failed."""


def network_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a failed Hub call: huggingface_hub's own (an HTTP error: refused token, missing repo;
    no cached copy while offline), the builtin ConnectionError and TimeoutError (datasets raises them), and the HTTP
    client's transport errors, which are not OSErrors (this huggingface_hub uses httpx2, 1.x httpx, 0.x requests).
    A client that was never imported raised nothing, so only those in sys.modules are listed."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    found = [HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        client = sys.modules.get(module)
        if client is not None and hasattr(client, name):
            found.append(getattr(client, name))
    return tuple(found)


def one_line(err: BaseException) -> str:
    """An error's message on one line: the Hub's span several (the server's message, advice, links)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def describe_network_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {one_line(err)}"


@contextmanager
def hub_errors_reported(what: str, *also: type[BaseException]):
    """``with hub_errors_reported("could not upload x to y"):`` turns a failed Hub call (:func:`network_errors`, and
    the types ``also``) into a :class:`HubError` of one line: ``what``, then the error's type and message."""
    try:
        yield
    except (*network_errors(), *also) as err:
        raise HubError(f"{what}: {describe_network_error(err)}") from err


def resolve_model_folder(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                         local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """A local model folder for a folder path or a Hub repo id (downloaded into the Hub cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.is_file():
        raise ModelFolderError(f"{path.resolve()} is a file; give the model folder that holds it"
                               + (f" ({path.parent})" if (path.parent / "labels.json").is_file() else ""))
    not_found = f"model folder not found: {path.resolve()}"
    if isinstance(name_or_path, Path) or name.startswith((".", "~", "/")) or "\\" in name or path.exists() \
            or name.count("/") > 1:
        raise ModelFolderError(not_found)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelFolderError(f"{not_found} ({name!r} is not a Hub repo id either)") from None
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                      token=token, allow_patterns=MODEL_FILE_PATTERNS, library_name="sparseshare"))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise ModelFolderError(f"{not_found}; as a Hub repo id, {name!r} has no cached copy and the Hub cannot be "
                               f"reached ({describe_network_error(err)})") from err
    except network_errors() as err:  # a refused token, a missing repo, a connection lost mid-download, ...
        raise ModelFolderError(f"{not_found}; as a Hub repo id, downloading {name!r} failed "
                               f"({describe_network_error(err)})") from err


def push_folder(folder: Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload sparseshare model", revision: str | None = None):
    """Create the repo if needed and upload ``folder`` in one commit; returns the ``CommitInfo``. A failed call raises
    huggingface_hub's own error (``sparseshare push`` reports it in one line, see :func:`hub_errors_reported`)."""
    from huggingface_hub import HfApi

    from .model_folder import strategy_files

    folder = Path(folder)
    model_files, left_out = _model_files(folder)
    if left_out:
        logger.warning(f"not uploaded (not model files): {', '.join(left_out)}")
    # a strategy's file that this folder lacks is deleted from the repo, where an earlier push may have left it (a
    # masks.safetensors beside a hard-sharing config.json is a folder the loader refuses)
    stale = sorted(file for file in strategy_files() if not (folder / file).exists())
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, commit_message=commit_message,
                             revision=revision, allow_patterns=model_files, delete_patterns=stale or None)


def _model_files(folder: Path) -> tuple[list[str], list[str]]:
    """The files of ``folder`` that a push uploads (those :data:`MODEL_FILE_PATTERNS` names, the set loading
    downloads), and the others, which stay home: a folder on disk may hold a token file, notes or a pickle beside the
    model. A model file that is a link leading out of the folder is refused: its target's contents would be
    uploaded under the model's name."""
    from huggingface_hub.utils import filter_repo_objects

    root, entries = folder.resolve(), list(folder.rglob("*"))
    linked = next((p for p in entries if p.is_symlink() and p.is_dir()), None)
    if linked is not None:  # not followed by the upload: the repo would lack its files (a tokenizer, ...)
        raise ModelFolderError(f"{linked} is a link to the folder {linked.resolve()}, which a push does not follow; "
                               f"copy that folder into {folder}")
    files = sorted(p.relative_to(folder).as_posix() for p in entries if p.is_file())
    uploaded = list(filter_repo_objects(files, allow_patterns=MODEL_FILE_PATTERNS))
    for name in uploaded:
        target = (folder / name).resolve()
        if not target.is_relative_to(root):
            raise ModelFolderError(f"{folder / name} is a link to {target}, outside the model folder: refusing to "
                                   f"upload another file's contents as part of the model")
    return uploaded, [name for name in files if name not in uploaded]


def push_to_hub(model, repo_id: str, **kwargs):
    """``model.save_pretrained`` into a temporary folder, then :func:`push_folder`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / "model")
        return push_folder(folder, repo_id, **kwargs)
