"""Publishing a pipeline on the Hugging Face Hub: a fresh save in a temporary folder, uploaded with
huggingface_hub's ``HfApi.upload_folder``, refused if any file holds the access token.

1. ``create_repo(exist_ok=True)``, after checking that the Hub could serve the model's code;
2. the repo's README.md and manifest.json, if it has them, are downloaded into the temporary folder
   first, so the new card keeps the text its owner wrote (model_card.py) and the manifest keeps the
   checksums of other variants' weights;
3. a fresh save (folder.save_pipeline_folder) in that folder;
4. ``upload_folder`` with `UPLOAD_ALLOW_PATTERNS` / `UPLOAD_IGNORE_PATTERNS`, whose ``delete_patterns``
   remove the repo's stale weights of the same variant (old shards or .bin files that diffusers could
   pick up instead of the new ones; the local save drops the same files, folder.variant_weights)
   in the commit that adds the new files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .folder import save_pipeline_folder, variant_weights
from .layout import MANIFEST_NAME, MODEL_INDEX_NAME
from .model_card import MODEL_CARD_NAME, SAMPLE_GRID_NAME, ModelCardInfo, refuse_token_in_files
from .shipped_code import CodeLayoutError, check_shipped_code

# what a saved pipeline consists of (folder.save_pipeline_folder); nothing else is uploaded
UPLOAD_ALLOW_PATTERNS = [
    MODEL_INDEX_NAME, MANIFEST_NAME, MODEL_CARD_NAME, SAMPLE_GRID_NAME, "*.py", "*/config.json", "*/scheduler_config.json",
    "*/diffusion_pytorch_model*.safetensors", "*/diffusion_pytorch_model*.safetensors.index*.json",
]
# hidden files and folders (staging folders, local_dir metadata) and Python caches
UPLOAD_IGNORE_PATTERNS = [".*", "*/.*", "__pycache__/*", "*/__pycache__/*", "*.pyc"]


def uploadable_files(folder: str | os.PathLike) -> list[Path]:
    """Files of ``folder`` that ``upload_folder`` sends: those `UPLOAD_ALLOW_PATTERNS` allows and
    `UPLOAD_IGNORE_PATTERNS` does not ignore (huggingface_hub's own ``filter_repo_objects``)."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    relative = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    chosen = filter_repo_objects(relative, allow_patterns=UPLOAD_ALLOW_PATTERNS, ignore_patterns=UPLOAD_IGNORE_PATTERNS)
    return [folder / name for name in chosen]


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
    """Create the Hub repo ``repo_id`` if needed and upload a fresh save of ``pipeline`` to it (module doc).

    ``model_card`` None keeps the repo's README.md as it is (a default card for a repo without one).
    A model whose code the Hub could not serve is refused before the repo is created. ``token`` goes
    to the Hub client only. Returns huggingface_hub's CommitInfo.
    """
    from huggingface_hub import HfApi

    problems = check_shipped_code(pipeline)
    if problems:  # before create_repo, so a failed push leaves no empty repo behind
        raise CodeLayoutError(problems[0])
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    remote_files = api.list_repo_files(repo_id)
    with tempfile.TemporaryDirectory(prefix="ddpm-push-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        folder.mkdir()
        for name in {MODEL_CARD_NAME, MANIFEST_NAME} & set(remote_files):
            downloaded = api.hf_hub_download(repo_id, name, local_dir=Path(tmp) / ".remote")
            (folder / name).write_bytes(Path(downloaded).read_bytes())
        save_pipeline_folder(
            pipeline, folder, model_card=model_card, card_repo_id=repo_id, num_classes=num_classes,
            variant=variant, max_shard_size=max_shard_size, token=token,
        )
        refuse_token_in_files(uploadable_files(folder), token, "upload")
        components = [name for name, component in pipeline.components.items() if component is not None]
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, create_pr=create_pr,
            allow_patterns=UPLOAD_ALLOW_PATTERNS, ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),
            # exact names as patterns; upload_folder keeps the files it uploads anew
            delete_patterns=variant_weights(remote_files, components, variant),
        )
