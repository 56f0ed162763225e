"""Publishing a pipeline on the Hugging Face Hub: a fresh save in a temporary folder, uploaded in one
commit, refused if any file holds the access token.

Not shipped with saved pipelines: ``ScratchDDPMPipeline.push_to_hub`` imports it by name at call time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .model_card import ModelCardInfo
from .pipeline_folder import save_pipeline_folder
from .remote_code import CodeLayoutError, hub_loading_problems


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
) -> Any:
    """Create the Hub repo ``repo_id`` if needed and commit a fresh save of ``pipeline`` to it.

    The save is made in a temporary folder (never a training output folder with its checkpoints),
    with a model card (a default one if ``model_card`` is None). A model whose code the Hub could
    not serve (`hub_loading_problems`) is refused before the repo is created. ``token`` goes to the
    Hub client only. Returns huggingface_hub's CommitInfo.
    """
    from huggingface_hub import HfApi

    problems = hub_loading_problems(pipeline.components)
    if problems:  # before create_repo, so a failed push leaves no empty repo behind
        raise CodeLayoutError(problems[0])
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="ddpm-push-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        save_pipeline_folder(
            pipeline,
            folder,
            model_card=model_card if model_card is not None else ModelCardInfo(),
            card_repo_id=repo_id,
            num_classes=num_classes,
            for_hub=True,
        )
        return commit_folder(api, folder, repo_id, commit_message=commit_message, token=token, create_pr=create_pr)


def uploadable_files(folder: str | os.PathLike) -> list[Path]:
    """Files of ``folder`` to upload: everything but hidden files/folders and Python caches."""
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts)
    )


def refuse_token_in_files(files: list[Path], token: str | None) -> None:
    """Raise if the access token's text occurs in any file about to be uploaded (the token is not echoed)."""
    if not token or not isinstance(token, str):
        return
    needle = token.encode("utf-8")
    for path in files:
        if needle in path.read_bytes():
            raise ValueError(f"refusing to upload: {path} contains the Hub access token")


def commit_folder(
    api: Any,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    token: str | None = None,
    create_pr: bool = False,
) -> Any:
    """One commit adding every uploadable file of ``folder`` to ``repo_id`` (huggingface_hub's create_commit)."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    files = uploadable_files(folder)
    refuse_token_in_files(files, token)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in files
    ]
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, create_pr=create_pr)
