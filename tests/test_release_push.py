"""`push_release` against a fake HfApi that records its calls: the order (repo, a branch per
revision from the first commit, each upload's folder and revision, main last without
revisions/), and that every offline mistake (no token, not a release, bad repo id) fails
before any call. The hub itself is never contacted."""

import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

from lmforge.errors import LmforgeError
from lmforge.release.push import push_release

NAMES = ["step100-tokens2M", "step200-tokens4M"]


class FakeApi:
    """Records (method, args, kwargs); the repo's history is newest first, like the hub's."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_on = fail_on

    def _record(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if name == self.fail_on:
            # a response object built here, never sent: HfHubHTTPError needs one
            response = httpx.Response(403, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
            raise HfHubHTTPError("403 Forbidden: you don't have the rights to create a model under this namespace",
                                 response=response)

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", args, kwargs)

    def list_repo_commits(self, *args, **kwargs):
        self._record("list_repo_commits", args, kwargs)
        return [SimpleNamespace(commit_id="c-newest"), SimpleNamespace(commit_id="c-initial")]

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", args, kwargs)

    def upload_folder(self, *args, **kwargs):
        self._record("upload_folder", args, kwargs)


def make_release(root: Path) -> Path:
    rel = root / "REL"
    revisions = []
    for i, name in enumerate(NAMES, 1):
        (rel / "revisions" / name).mkdir(parents=True)
        (rel / "revisions" / name / "config.json").write_text("{}")
        revisions.append({"name": name, "step": 100 * i, "tokens": 1638400 * i, "steps": [1, 100 * i]})
    (rel / "revisions.json").write_text(json.dumps({"unit": "M", "revisions": revisions}))
    (rel / "config.json").write_text("{}")
    (rel / "README.md").write_text("# card\n")
    (rel / "SHA256SUMS").write_text("")
    return rel


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No token anywhere: env unset, an empty token cache, HF_HOME at an empty folder."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))


def test_call_order(tmp_path):
    rel, api = make_release(tmp_path), FakeApi()
    pushed = push_release(rel, "my-org/my-model", token="hf_x", private=True, api=api)
    assert pushed == [*NAMES, "main"]
    assert [c[0] for c in api.calls] == ["create_repo", "list_repo_commits",
                                          "create_branch", "upload_folder", "create_branch", "upload_folder",
                                          "upload_folder"]
    name, args, kwargs = api.calls[0]
    assert args == ("my-org/my-model",) and kwargs == dict(exist_ok=True, private=True, repo_type="model")
    branches = [c for c in api.calls if c[0] == "create_branch"]
    assert [c[2]["branch"] for c in branches] == NAMES
    assert all(c[2]["revision"] == "c-initial" and c[2]["exist_ok"] for c in branches)  # the first commit
    uploads = [c[2] for c in api.calls if c[0] == "upload_folder"]
    for up, name, step in zip(uploads, NAMES, (100, 200)):
        assert up["folder_path"] == rel / "revisions" / name and up["revision"] == name
        assert up["repo_id"] == "my-org/my-model"
        assert up["commit_message"] == f"{name}: step {step}, {1638400 * step // 100} tokens"
        assert "ignore_patterns" not in up
    assert uploads[-1]["folder_path"] == rel and uploads[-1]["revision"] == "main"
    assert uploads[-1]["ignore_patterns"] == ["revisions/*"]


def test_token_from_environment(tmp_path, no_login, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    made = {}

    def fake_hf_api(token):
        made["token"], made["api"] = token, FakeApi()
        return made["api"]

    monkeypatch.setattr(huggingface_hub, "HfApi", fake_hf_api)
    push_release(make_release(tmp_path), "my-org/my-model")
    assert made["token"] == "hf_env" and made["api"].calls


def test_no_token_no_call(tmp_path, no_login, monkeypatch):
    api = FakeApi()
    with pytest.raises(LmforgeError, match=r"set HF_TOKEN or run `hf auth login`.*pass --token"):
        push_release(make_release(tmp_path), "my-org/my-model", api=api)
    assert api.calls == []


def test_no_token_when_get_token_finds_none(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    api = FakeApi()
    with pytest.raises(LmforgeError, match="no Hugging Face token"):
        push_release(make_release(tmp_path), "my-org/my-model", api=api)
    assert api.calls == []


@pytest.mark.parametrize("broken", ["revisions.json", "SHA256SUMS", "folder"])
def test_not_a_release_fails_before_any_call(tmp_path, broken):
    rel, api = make_release(tmp_path), FakeApi()
    if broken == "folder":
        (rel / "revisions" / NAMES[1] / "config.json").unlink()
        match = rf"{NAMES[1]} has no config.json"
    else:
        (rel / broken).unlink()
        match = rf"is not a release folder \(no {broken}\).*lmforge release RUN --out REL"
    with pytest.raises(LmforgeError, match=match):
        push_release(rel, "my-org/my-model", token="hf_x", api=api)
    assert api.calls == []


def test_not_a_release_even_without_token(tmp_path, no_login):
    with pytest.raises(LmforgeError, match="is not a release folder"):
        push_release(tmp_path, "my-org/my-model", api=FakeApi())


@pytest.mark.parametrize("repo", ["my-model", "a/b/c", "/name", "org/", "org/na me", "org/..x", "-org/x", "o" * 97 + "/x"])
def test_bad_repo_id(tmp_path, repo):
    api = FakeApi()
    with pytest.raises(LmforgeError, match=r"is not a hub model id; give it as ORG/NAME"):
        push_release(make_release(tmp_path), repo, token="hf_x", api=api)
    assert api.calls == []


def test_hub_error_is_one_line(tmp_path):
    api = FakeApi(fail_on="create_repo")
    with pytest.raises(LmforgeError, match=r"failed: 403 Forbidden.*write to my-org") as e:
        push_release(make_release(tmp_path), "my-org/my-model", token="hf_x", api=api)
    assert "\n" not in str(e.value)
