"""Publishing a finished model folder to the Hugging Face Hub.

The Trainer's own ``push_to_hub`` would write its generic model card over bmc's; bmc instead
uploads the exported folder (weights, processor, card, figures, metrics, split manifest) with
``huggingface_hub`` in one commit. The token comes from ``--hub_token`` or the environment
(``HF_TOKEN``) and is never logged or written anywhere.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

#: Files a published model consists of; checkpoints and scratch files stay local.
PUBLISH_PATTERNS = ["*.safetensors", "*.json", "*.md", "*.png", "*.csv"]


def publish(
    folder: str | Path,
    repo_id: str | None,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload bmc cell classifier",
) -> str:
    """Create the model repo if needed and upload ``folder``'s model files; returns the commit URL."""
    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/bmc-dinov2-small)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=PUBLISH_PATTERNS,
        ignore_patterns=["checkpoint-*/**", ".*"],
        commit_message=commit_message,
    )
    return str(info)
