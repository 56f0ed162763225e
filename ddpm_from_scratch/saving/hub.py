"""Publishing a pipeline on the Hugging Face Hub: a fresh save in a temporary folder, uploaded in one
commit, refused if any file holds the access token.

What a push does, in order (all through huggingface_hub's ``HfApi``):

1. ``create_repo(exist_ok=True)``, after checking that the Hub could serve the model's code;
2. ``list_repo_files``: if the repo already has a README.md, it is downloaded into the temporary
   folder first, so the new card keeps the text and metadata its owner wrote (model_card.py);
3. a fresh save (pipeline_folder.save_pipeline_folder) in that folder;
4. the files to upload are chosen with huggingface_hub's own allow/ignore pattern filter
   (`UPLOAD_ALLOW_PATTERNS`, `UPLOAD_IGNORE_PATTERNS`), scanned for the token, and sent with
   ``create_commit`` together with deletions of the repo's stale weights of the same variant (old
   shards or .bin files that diffusers could pick up instead of the new ones).

One ``create_commit``, not ``upload_folder``: with hf_xet installed, ``upload_folder`` may split a
folder into several commits, and a reader could then see new weights beside an old model_index.json.

Not shipped with saved pipelines: ``ScratchDDPMPipeline.push_to_hub`` imports it by name at call time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .model_card import MODEL_CARD_NAME, ModelCardInfo
from .folder import save_pipeline_folder, weights_file_pattern
from .shipped_code import CodeLayoutError, hub_loading_problems

# what a saved pipeline consists of (pipeline_folder.save_pipeline_folder); nothing else is uploaded
UPLOAD_ALLOW_PATTERNS = [
    "model_index.json",
    MODEL_CARD_NAME,
    "sample_grid.png",
    "*.py",
    "*/config.json",
    "*/scheduler_config.json",
    "*/diffusion_pytorch_model*.safetensors",
    "*/diffusion_pytorch_model*.safetensors.index*.json",
    "*.sha256",
]
# hidden files and folders (staging folders, local_dir metadata) and Python caches
UPLOAD_IGNORE_PATTERNS = [".*", "*/.*", "__pycache__/*", "*/__pycache__/*", "*.pyc"]


def push_pipeline(
    pipeline: Any,
    repo_id: str,
    *,
    private: bool,
    token: str | None,
    commit_message: str,
    model_card: ModelCardInfo | None,
    num_classes: int | None,
    create_pr: bool,
    endpoint: str | None,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
) -> Any:
    """Create the Hub repo ``repo_id`` if needed and commit a fresh save of ``pipeline`` to it (module doc).

    ``model_card`` None keeps the repo's README.md as it is (a default card for a repo without one).
    A model whose code the Hub could not serve (`hub_loading_problems`) is refused before the repo is
    created. ``token`` goes to the Hub client only. Returns huggingface_hub's CommitInfo.
    """
    from huggingface_hub import HfApi

    problems = hub_loading_problems(pipeline.components)
    if problems:  # before create_repo, so a failed push leaves no empty repo behind
        raise CodeLayoutError(problems[0])
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    remote_files = api.list_repo_files(repo_id)
    with tempfile.TemporaryDirectory(prefix="ddpm-push-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        if MODEL_CARD_NAME in remote_files:
            downloaded = api.hf_hub_download(repo_id, MODEL_CARD_NAME, local_dir=Path(tmp) / ".existing-card")
            folder.mkdir()
            (folder / MODEL_CARD_NAME).write_bytes(Path(downloaded).read_bytes())
        save_pipeline_folder(
            pipeline,
            folder,
            model_card=model_card,
            card_repo_id=repo_id,
            num_classes=num_classes,
            variant=variant,
            max_shard_size=max_shard_size,
            for_hub=True,
        )
        stale = stale_weights(remote_files, folder, variant)
        return commit_folder(
            api, folder, repo_id, commit_message=commit_message, token=token, create_pr=create_pr, delete=stale
        )


def uploadable_files(folder: str | os.PathLike) -> list[Path]:
    """Files of ``folder`` to upload: those `UPLOAD_ALLOW_PATTERNS` allows and `UPLOAD_IGNORE_PATTERNS`
    does not ignore (huggingface_hub's ``filter_repo_objects``, as ``upload_folder`` applies them)."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    relative = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    chosen = filter_repo_objects(relative, allow_patterns=UPLOAD_ALLOW_PATTERNS, ignore_patterns=UPLOAD_IGNORE_PATTERNS)
    return [folder / name for name in chosen]


def stale_weights(remote_files: list[str], folder: Path, variant: str | None) -> list[str]:
    """Repo files that are weights of ``variant`` in a component folder this save writes, but that the
    save does not contain (an old shard layout, an old .bin): the same rule as a local re-save."""
    pattern = weights_file_pattern(variant)
    components = {path.name for path in folder.iterdir() if path.is_dir()}
    uploaded = {path.relative_to(folder).as_posix() for path in uploadable_files(folder)}
    return sorted(
        name
        for name in remote_files
        if name.count("/") == 1
        and name.split("/")[0] in components
        and pattern.match(name.split("/")[1])
        and name not in uploaded
    )


def refuse_token_in_files(files: list[Path], token: str | None) -> None:
    """Raise if the access token's text occurs in any file about to be uploaded (the token is not echoed)."""
    if not token or not isinstance(token, str):
        return
    needle = token.encode("utf-8")
    for path in files:
        if needle in path.read_bytes():
            raise ValueError(f"refusing to upload: {path.name} ({path}) contains the Hub access token")


def commit_folder(
    api: Any,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    token: str | None = None,
    create_pr: bool = False,
    delete: list[str] | tuple[str, ...] = (),
) -> Any:
    """One ``create_commit`` adding every `uploadable_files` file of ``folder`` to ``repo_id`` and
    deleting the repo paths in ``delete``; refused before anything is sent if a file holds ``token``."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    folder = Path(folder)
    files = uploadable_files(folder)
    refuse_token_in_files(files, token)
    operations: list[Any] = [CommitOperationDelete(path_in_repo=name) for name in delete]
    operations += [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in files
    ]
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, create_pr=create_pr)
