"""Shared helpers for the pipeline/hub tests: tiny models and a loopback stand-in for the Hub.

`FakeHub` answers the few HTTP routes huggingface_hub 2.4 and diffusers 0.42 call to create a
repo, list its files, commit (add and delete) files and download them again (read from huggingface_hub's hf_api.py, _commit_api.py,
file_download.py): it listens on 127.0.0.1 only, keeps everything in memory, tells every upload
to be a plain (non-LFS, non-Xet) one, records each call, and shuts itself down after a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import torch
from _helpers import perturb_
from diffusers import DDPMScheduler, UNet2DModel

from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.unet import ScratchUNet2DModel

NUM_TRAIN_TIMESTEPS = 50


def tiny_diffusers_unet(in_channels: int = 1, num_class_embeds: int | None = None, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    ).eval()


def tiny_scratch_unet(in_channels: int = 1, num_class_embeds: int | None = None, seed: int = 0) -> ScratchUNet2DModel:
    """A tiny ScratchUNet2DModel with random (not the paper's zero) output layers, so outputs depend on inputs."""
    torch.manual_seed(seed)
    unet = ScratchUNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_resolutions=(4,),
        dropout=0.0,
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )
    return perturb_(unet, 0.2).eval()


def ddpm_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)


def scratch_scheduler() -> ScratchDDPMScheduler:
    return ScratchDDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _dynamic_module_names() -> list[str]:
    return [name for name in sys.modules if name == "diffusers_modules" or name.startswith("diffusers_modules.")]


@contextlib.contextmanager
def isolated_remote_code_cache(path):
    """Point diffusers' remote-code module cache at ``path`` for in-process trust_remote_code loads.

    The default cache (~/.cache/huggingface/modules) is shared by every process on the machine, and
    its package ``diffusers_modules`` stays imported; both are swapped out here and restored after.
    """
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    saved_cache = dynamic_modules.HF_MODULES_CACHE
    saved_modules = {name: sys.modules.pop(name) for name in _dynamic_module_names()}
    saved_path = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if entry != saved_cache]
    dynamic_modules.HF_MODULES_CACHE = str(path)
    try:
        yield
    finally:
        dynamic_modules.HF_MODULES_CACHE = saved_cache
        for name in _dynamic_module_names():
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path


# A fresh interpreter where `import ddpm_from_scratch` fails, however it is installed (editable, wheel,
# PYTHONPATH), loads SOURCE (a folder or Hub repo id) with diffusers alone and samples; runs THEN (Python
# code with `pipe` in scope, e.g. another scheduler or a push); then it tries to re-save, and if that works,
# reloads the copy and samples again.
NO_PACKAGE_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "ddpm_from_scratch":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, HidePackage())
    try:
        import ddpm_from_scratch
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("ddpm_from_scratch is importable")

    import numpy as np, torch
    from diffusers import DiffusionPipeline

    source, resaved, out, call, seed = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])

    def images(path):
        pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        result = pipe(generator=torch.Generator().manual_seed(seed), **call).images
        return pipe, np.asarray(result.cpu() if isinstance(result, torch.Tensor) else result)

    pipe, first = images(source)
    exec(sys.argv[6], {"pipe": pipe, "torch": torch})
    outputs, save_error = {"first": first}, None
    try:
        pipe.save_pretrained(resaved)
    except Exception as error:
        save_error = {"type": type(error).__name__, "message": str(error)}
    else:
        outputs["second"] = images(resaved)[1]
    np.savez(out, **outputs)
    print(json.dumps({
        "classes": [type(c).__module__ for c in (pipe, pipe.unet, pipe.scheduler)],
        "package_modules": [m for m in sys.modules if m.startswith("ddpm_from_scratch")],
        "save_error": save_error,
    }))
    """
)


def run_without_package(
    source: str, tmp_path: Path, call: dict, seed: int = 0, then: str = "", **extra_env: str
) -> tuple[dict, dict]:
    """Run NO_PACKAGE_CHILD with ``torch.Generator().manual_seed(seed)`` and ``then``; returns (its report,
    {"first": images, "second": images after re-saving, if the re-save worked}). Images come back as
    numpy arrays in the layout ``call``'s output_type gives."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE")}
    env.update(
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HOME=str(tmp_path / "hf_home"),
        OMP_NUM_THREADS="1",
        NO_PROXY="127.0.0.1,localhost",
        **extra_env,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_PACKAGE_CHILD,
            source,
            str(tmp_path / "resaved"),
            str(tmp_path / "out.npz"),
            json.dumps(call),
            str(seed),
            then,
        ],
        env=env,
        cwd=tmp_path,  # not the repository root, which would put the package on sys.path
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(tmp_path / "out.npz") as outputs:
        return report, {key: outputs[key] for key in outputs.files}


# ---- a loopback Hub -------------------------------------------------------------------------------

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<revision>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<revision>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(/revision/(?P<revision>[^/]+))?$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<revision>[^/]+)$"), "tree"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"), "resolve"),
]
# huggingface_hub asks for this registry to fill its user agent and copes with a 404
_IGNORED = {"/api/agent-harnesses"}
MAX_BODY_BYTES = 64 * 2**20


class FakeHub:
    """In-memory Hub on 127.0.0.1. ``files[repo_id][path] = bytes``; ``calls`` lists (method, route name, path)."""

    def __init__(self, user: str = "test-user", timeout_s: float = 300.0):
        self.user = user
        self.files: dict[str, dict[str, bytes]] = {}
        self.repo_payloads: list[dict] = []
        self.commit_headers: list[dict] = []
        self.deleted: list[str] = []  # paths removed by commits (deletedFile operations)
        self.calls: list[tuple[str, str, str]] = []
        self.unexpected: list[tuple[str, str]] = []
        self.authorization: list[str | None] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        # the server stops itself even if a test forgets to (or hangs)
        self._deadline = threading.Timer(timeout_s, self.stop)
        self._deadline.daemon = True

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._deadline.cancel()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def commit_oid(self, repo_id: str) -> str:
        digest = hashlib.sha1()
        for path, content in sorted(self.files.get(repo_id, {}).items()):
            digest.update(path.encode() + b"\0" + content)
        return digest.hexdigest()

    # ---- routes -------------------------------------------------------------------------------

    def _create_repo(self, body: dict, **_) -> tuple[int, dict]:
        self.repo_payloads.append(body)
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        self.files.setdefault(repo_id, {})
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def _validate_yaml(self, body: dict, **_) -> tuple[int, dict]:
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, body: dict, repo: str, **_) -> tuple[int, dict]:
        if repo not in self.files:
            return 404, {"error": "Repository not found"}
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
        return 200, {"files": files}

    def _commit(self, raw: bytes, repo: str, **_) -> tuple[int, dict]:
        if repo not in self.files:
            return 404, {"error": "Repository not found"}
        for line in raw.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                self.commit_headers.append(item["value"])
            elif item["key"] == "file":
                value = item["value"]
                assert value["encoding"] == "base64"
                self.files[repo][value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                self.deleted.append(item["value"]["path"])
                if self.files[repo].pop(item["value"]["path"], None) is None:
                    return 404, {"error": f"cannot delete {item['value']['path']}: no such file"}
            else:  # lfsFile, deletedFolder, ...: not something these tests should cause
                return 400, {"error": f"unsupported commit operation {item['key']}"}
        oid = self.commit_oid(repo)
        return 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _model_info(self, body: dict, repo: str, **_) -> tuple[int, dict]:
        if repo not in self.files:
            return 404, {"error": "Repository not found"}
        siblings = [{"rfilename": path, "size": len(content)} for path, content in sorted(self.files[repo].items())]
        return 200, {"id": repo, "modelId": repo, "sha": self.commit_oid(repo), "private": False, "siblings": siblings}

    def _tree(self, body: dict, repo: str, **_) -> tuple[int, list]:
        if repo not in self.files:
            return 404, {"error": "Repository not found"}
        return 200, [
            {"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
            for path, content in sorted(self.files[repo].items())
        ]

    def _resolve(self, repo: str, path: str, **_) -> tuple[int, bytes, dict]:
        content = self.files.get(repo, {}).get(unquote(path))
        if content is None:
            return 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}
        headers = {
            "X-Repo-Commit": self.commit_oid(repo),
            "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
        }
        return 200, content, headers

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean (and headers out of it)
                pass

            def _dispatch(self, method: str) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(413, b'{"error": "too large"}', {})
                    return
                raw = self.rfile.read(length) if length else b""
                matches = ((name, pattern.match(path)) for verb, pattern, name in _ROUTES if verb == method)
                route = next(((name, match) for name, match in matches if match), None)
                if route is None:
                    if path not in _IGNORED:
                        with hub._lock:
                            hub.unexpected.append((method, path))
                    self._send(404, b'{"error": "not emulated"}', {})
                    return
                name, match = route
                with hub._lock:
                    hub.calls.append((method, name, path))
                    hub.authorization.append(self.headers.get("Authorization"))
                    params = {k: v for k, v in match.groupdict().items() if v is not None}
                    if name == "resolve":
                        status, body, headers = hub._resolve(**params)
                    else:
                        handler = getattr(hub, f"_{name}")
                        if name == "commit":
                            status, payload = handler(raw, **params)
                        else:
                            status, payload = handler(json.loads(raw) if raw else {}, **params)
                        body, headers = json.dumps(payload).encode(), {"Content-Type": "application/json"}
                self._send(status, b"" if method == "HEAD" else body, headers, content_length=len(body))

            def _send(self, status: int, body: bytes, headers: dict, content_length: int | None = None) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_HEAD(self) -> None:
                self._dispatch("HEAD")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

        return Handler
