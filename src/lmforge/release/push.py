"""`lmforge release push REL --repo ORG/NAME`: upload a release folder the way OLMo's model
repositories are laid out.

* one branch per revision (``revisions.json`` order), each holding only that checkpoint's
  transformers folder, so ``AutoModelForCausalLM.from_pretrained(repo, revision=name)`` loads
  it, exactly as OLMo's intermediate checkpoints load;
* ``main`` last: the final model with the card, data manifest and order, logs, openness and
  sums, without ``revisions/`` (those files already live on their branches).

Each branch starts from the repository's first commit (the hub's initial ``.gitattributes``
commit), not from ``main``: a branch made from main after the final upload would carry the
final model's files next to the checkpoint's, and a stale file there would load silently.

Everything that can be checked offline (the folder, the repo id, a token) is checked before
the first request, so a mistake costs nothing on the hub.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

REVISIONS = "revisions.json"
SUMS = "SHA256SUMS"

# The hub's rule for a namespace and a repo name: letters, digits, '-', '_', '.', at most 96.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def push_release(release_dir: Path, repo_id: str, *, token: str | None = None, private: bool = False,
                 api: Any = None) -> list[str]:
    """Push `release_dir` to the model repository `repo_id`; returns the branches pushed, in
    order, ending with "main". `api` is an `huggingface_hub.HfApi`-like object (tests pass a
    fake); by default one is made with `token`."""
    release_dir = Path(release_dir)
    revisions = read_revisions(release_dir)
    check_repo_id(repo_id)
    token = resolve_token(token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return _upload(api, release_dir, repo_id, revisions, private)
    except HfHubHTTPError as e:  # 401/403/404 and the like: one line, with the hub's own reason
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmforgeError(f"pushing {release_dir} to {repo_id} failed: {first}; check that the token can "
                           f"write to {repo_id.split('/')[0]} and run the push again (finished branches are kept)")


def read_revisions(release_dir: Path) -> list[dict[str, Any]]:
    """The revisions of a release folder, each checked to have its folder; a folder without
    revisions.json and SHA256SUMS is not a release."""
    missing = [f for f in (REVISIONS, SUMS) if not (release_dir / f).is_file()]
    if missing:
        raise LmforgeError(f"{release_dir} is not a release folder (no {' or '.join(missing)}); "
                           "make one with `lmforge release RUN --out REL` and push that")
    try:
        revisions = json.loads((release_dir / REVISIONS).read_text())["revisions"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LmforgeError(f"{release_dir / REVISIONS} is not a revisions list ({e}); "
                           "rebuild the release with `lmforge release`")
    for r in revisions:
        if not (release_dir / "revisions" / str(r.get("name")) / "config.json").is_file():
            raise LmforgeError(f"{release_dir / 'revisions' / str(r.get('name'))} has no config.json but "
                               f"{REVISIONS} lists it; rebuild the release, or check it with `lmforge verify REL`")
    return revisions


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise LmforgeError(f"--repo {repo_id!r} is not a hub model id; give it as ORG/NAME "
                           "(letters, digits, '-', '_', '.'), e.g. --repo my-org/my-model")


def resolve_token(token: str | None) -> str:
    """`token`, else the one huggingface_hub finds (HF_TOKEN, then the login cache); checked
    here because without one the first upload would fail only after the repo was created."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise LmforgeError("no Hugging Face token to push with; set HF_TOKEN or run `hf auth login` "
                           "(`huggingface-cli login` in older huggingface_hub), or pass --token")
    return found


def _upload(api: Any, release_dir: Path, repo_id: str, revisions: list[dict[str, Any]], private: bool) -> list[str]:
    api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
    # list_repo_commits is newest first: the last one is the repo's initial commit
    first_commit = api.list_repo_commits(repo_id, repo_type="model")[-1].commit_id
    pushed = []
    for i, r in enumerate(revisions, 1):
        name = r["name"]
        log.info(f"push {repo_id}: revision {i}/{len(revisions)} {name}")
        api.create_branch(repo_id, branch=name, revision=first_commit, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=release_dir / "revisions" / name, revision=name,
                          repo_type="model", commit_message=f"{name}: step {r['step']}, {r['tokens']} tokens")
        pushed.append(name)
    log.info(f"push {repo_id}: main (final model, card, data, logs)")
    api.upload_folder(repo_id=repo_id, folder_path=release_dir, revision="main", repo_type="model",
                      ignore_patterns=["revisions/*"], commit_message="release: final model, card, data order, logs")
    pushed.append("main")
    return pushed
