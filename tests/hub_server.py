"""A fake Hugging Face Hub on the loopback address, in memory, for the tests of the Hub paths.

It speaks just the part of the Hub's HTTP API that pushing a model (`push_to_hub`, the Trainer's pushes, i.e.
huggingface_hub's `create_repo` / `create_commit` / `upload_folder`) and loading one (`hf_hub_download` under
transformers' `cached_file`, and the listing a tokenizer's load makes) use, as huggingface_hub 2.x calls it:

    GET  /api/agent-harnesses                                the registry behind huggingface_hub's user agent: empty
    POST /api/repos/create                                   create a model repository
    POST /api/validate-yaml                                  check a README.md's metadata (accepted as it is)
    POST /api/models/{repo}/preupload/{revision}             how to upload each file: always "regular"
    POST /api/models/{repo}/commit/{revision}                one commit: ndjson, file contents inline (base64)
    GET  /api/models/{repo}[/revision/{revision}]            repository info: head commit `sha`, `siblings`
    GET  /api/models/{repo}/tree/{revision}[/{path}]         a folder's entries (`recursive=true`: all below it)
    HEAD /{repo}/resolve/{revision}/{path}                   file metadata: X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{revision}/{path}                   file contents (a `Range: bytes=a-b` is honoured)

Every file is answered "regular" at preupload, so its contents travel inside the commit and neither Git LFS nor
Xet (a separate storage service) is involved; the file endpoints send no `X-Xet-*` header or `Link`, so downloads
stay plain HTTP too. Errors carry the `X-Error-Code` header that huggingface_hub's `hf_raise_for_status` turns
into its exception types (`RepoNotFound` -> `RepositoryNotFoundError`, `RevisionNotFound`, `EntryNotFound` ->
`RemoteEntryNotFoundError`). Writing needs an `Authorization: Bearer ...` header, as on the Hub; reading is
public. Any other request is answered 404, and one the fake fails on 400, and both are recorded in
`FakeHub.unknown`, so a test can assert that nothing unexpected was asked for (a new client version's new call
shows up there first).

Standard library only: `http.server` on a thread. Each response closes its connection (HTTP/1.0), so stopping
the server leaves no thread waiting on a kept-alive connection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REVISION = r"(?P<revision>[^/]+)"  # a branch name or a commit id; quoted by the client ("refs%2Fpr%2F1")
ROUTES = [  # (method, path pattern, handler name)
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/preupload/{REVISION}", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/{REVISION}", "commit"),
    ("GET", rf"/api/models/{REPO}(?:/revision/{REVISION})?", "repo_info"),
    ("GET", rf"/api/models/{REPO}/tree/{REVISION}(?:/(?P<path>.+))?", "tree"),
    ("HEAD", rf"/{REPO}/resolve/{REVISION}/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/{REVISION}/(?P<path>.+)", "resolve"),
]
WRITES = {"create_repo", "preupload", "commit"}  # need a token, as on the Hub


def git_hash(data: bytes) -> str:
    """The git blob id of `data`: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """A model repository: one branch, `main`, and every commit's files (a commit id is a revision too)."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> {path: contents}
    messages: dict[str, str] = field(default_factory=dict)  # commit id -> summary
    main: str = ""

    def commit(self, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(f"{self.main}\n{message}\n{len(self.commits)}".encode()).hexdigest()
        self.commits[sha], self.messages[sha], self.main = files, message, sha
        return sha

    def resolve(self, revision: str) -> str | None:
        """The commit id that `revision` names, or None."""
        return self.main if revision == "main" else revision if revision in self.commits else None

    @property
    def files(self) -> dict[str, bytes]:
        """The files at the head of `main`."""
        return self.commits[self.main]


class HubError(Exception):
    """An error response: status, the Hub's `X-Error-Code` (None for none), a message and more JSON fields."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body


class FakeHub:
    """The server and its state. `with FakeHub() as hub:` serves on `hub.url` until the block ends."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unknown: list[tuple[str, str]] = []  # those no route matched, or that failed here
        self.lock = threading.Lock()  # the Trainer pushes from a background thread while the test reads
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))  # port 0: a free one
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: `shutdown` waits for the loop to notice it (0.5 s by default).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()  # stops serve_forever, then waits for it to return
        self.server.server_close()  # closes the listening socket
        self.thread.join()

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The files on `main` of `repo_id` (a copy)."""
        with self.lock:
            return dict(self.repos[repo_id].files)

    # ---- the endpoints: each returns (status, headers, body) or raises HubError ----

    def agent_harnesses(self) -> tuple[int, dict[str, str], bytes]:
        # huggingface_hub fetches which environment variables name a coding agent, to mention it in its user agent.
        return _json(200, {"standardEnvVars": [], "harnesses": {}})

    def create_repo(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if body.get("type", "model") != "model":
            raise HubError(400, None, f"only model repositories here, not {body.get('type')}")
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"  # no namespace: the token's user
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:  # `create_repo(exist_ok=True)` reads the url from this answer
            raise HubError(409, None, "You already created this model repo", url=url)
        self.repos[repo_id] = Repo()
        self.repos[repo_id].commit({}, "initial commit")
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        # The real Hub checks the card's metadata against its schema; the tests read the card back themselves.
        return _json(200, {"errors": [], "warnings": []})

    def preupload(self, repo: Repo, head: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        files = repo.commits[head]
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",  # contents inline in the commit: no LFS, no Xet
                "shouldIgnore": False,
                "oid": git_hash(files[f["path"]]) if f["path"] in files else None,  # unchanged files are skipped
            }
            for f in body["files"]
        ]
        return _json(200, {"files": answer, "commitOid": head})

    def commit(self, repo_id: str, repo: Repo, head: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        files, message = dict(repo.commits[head]), None
        for line in raw.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                parent = value.get("parentCommit")
                if parent is not None and parent != head:
                    raise HubError(412, None, f"parentCommit {parent} is not the head of the branch ({head})")
                message = value["summary"]
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:  # "lfsFile" would mean a file went to LFS storage, which this Hub never offers
                raise HubError(400, None, f"unsupported commit operation {key}")
        if message is None:
            raise HubError(400, None, "the commit has no header line")
        sha = repo.commit(files, message)
        return _json(200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

    def repo_info(self, repo_id: str, repo: Repo, sha: str) -> tuple[int, dict[str, str], bytes]:
        siblings = [
            {"rfilename": p, "size": len(c), "blobId": git_hash(c)} for p, c in sorted(repo.commits[sha].items())
        ]
        info = {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": False,
                "gated": False, "disabled": False, "siblings": siblings}  # fmt: skip
        return _json(200, info)

    def tree(self, repo: Repo, sha: str, folder: str, recursive: bool) -> tuple[int, dict[str, str], bytes]:
        # One page (no `Link` header), files and the folders they imply; a folder that holds nothing is absent.
        files, prefix = repo.commits[sha], f"{folder}/" if folder else ""
        if folder and not any(p.startswith(prefix) for p in files):
            raise HubError(404, "EntryNotFound", f"{folder} does not exist", {"X-Repo-Commit": sha})
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                name = prefix + "/".join(parts[:depth])
                entries.setdefault(
                    name, {"type": "directory", "oid": git_hash(name.encode()), "size": 0, "path": name}
                )
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": git_hash(data), "size": len(data), "path": path}
        return _json(200, list(entries.values()))

    def resolve(self, repo: Repo, sha: str, path: str, range_header: str | None) -> tuple[int, dict[str, str], bytes]:
        files = repo.commits[sha]
        if path not in files:  # X-Repo-Commit lets huggingface_hub cache that the file is absent at this commit
            raise HubError(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": sha})
        data, status = files[path], 200
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_hash(data)}"', "Content-Type": "application/octet-stream"}
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)):  # a resumed download
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return status, headers, data


def _json(status: int, value: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection (see the module docstring)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:  # quiet: `hub.requests` has them
            pass

        def _serve(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # always read: no reset on close
            path = urlsplit(self.path).path
            with hub.lock:
                hub.requests.append((method, self.path))
                try:
                    status, headers, body = self._route(method, path, raw)
                except Exception as err:  # a request this fake cannot answer: a 4xx, which the client does not retry
                    if not isinstance(err, HubError):
                        hub.unknown.append((method, f"{self.path}: {err!r}"))
                        err = HubError(400, None, f"fake hub: {err!r}")
                    status, headers, body = _json(err.status, {"error": str(err), **err.body})
                    headers |= err.headers | ({"X-Error-Code": err.code} if err.code else {})
                    headers["X-Error-Message"] = str(err)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)

        def _route(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
            found = [
                (name, m) for verb, pattern, name in ROUTES if verb == method and (m := re.fullmatch(pattern, path))
            ]
            if not found:
                hub.unknown.append((method, self.path))
                raise HubError(404, None, f"fake hub: no route for {method} {path}")
            name, m = found[0]
            if name in WRITES and not self.headers.get("Authorization", "").startswith("Bearer "):
                raise HubError(401, None, "Invalid credentials in Authorization header")
            if name == "agent_harnesses":
                return hub.agent_harnesses()
            if name == "create_repo":
                return hub.create_repo(json.loads(raw))
            if name == "validate_yaml":
                return hub.validate_yaml(json.loads(raw))
            repo_id = m["repo"]
            repo = hub.repos.get(repo_id)
            if repo is None:
                raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
            revision = unquote(m["revision"] or "main")
            sha = repo.resolve(revision)
            if sha is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if name in ("preupload", "commit"):
                if revision != "main" or parse_qs(urlsplit(self.path).query).get("create_pr"):
                    raise HubError(400, None, "fake hub: commits go to main, without pull requests")
                if name == "preupload":
                    return hub.preupload(repo, sha, json.loads(raw))
                return hub.commit(repo_id, repo, sha, raw)
            if name == "repo_info":
                return hub.repo_info(repo_id, repo, sha)
            if name == "tree":
                recursive = parse_qs(urlsplit(self.path).query).get("recursive") == ["true"]
                return hub.tree(repo, sha, unquote(m["path"] or "").strip("/"), recursive)
            return hub.resolve(repo, sha, unquote(m["path"]), self.headers.get("Range"))

    return Handler
