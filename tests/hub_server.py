"""A local stand-in for the Hugging Face Hub HTTP API (stdlib only): the project's only mocked boundary.

The real, unmodified huggingface_hub / datasets clients talk to it over HTTP, either in a subprocess with
`env={**os.environ, **hub.env(home=..., token=...)}` (HF_ENDPOINT is read at import time), or in-process by
passing `endpoint=hub.endpoint` (HfApi, snapshot_download, hf_hub_download, HfFileSystem all accept it).
Xet storage is not implemented: huggingface_hub 2.x sends every "lfs" file through Xet whenever hf_xet is
installed (a client-side choice, not advertised by the server), so clients need HF_HUB_DISABLE_XET=1 (in
`env()`) to use the classic LFS "basic" transfer, or build `FakeHub(lfs_threshold=None)` to commit all inline.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}  # URL plural -> repo_type
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # repo_type -> URL prefix of web/resolve URLs


class HubError(Exception):
    """An HTTP error; `code` goes in X-Error-Code, which huggingface_hub maps to RepositoryNotFoundError etc."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _git_sha1(data: bytes) -> str:  # what git (and the Hub) use as the blob id of a regular file
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """In-process fake Hub. `storage`: folder for blobs + state.json (reloaded if present); None = memory only.

    `lfs_threshold`: files of at least this many bytes get uploadMode "lfs" at preupload (the real Hub uses
    10 MB); None makes every file "regular" (inline base64 in the commit), which works even with Xet enabled.
    """

    def __init__(self, storage: Path | str | None = None, *, lfs_threshold: int | None = 10 * 1024 * 1024):
        self.storage = Path(storage) if storage is not None else None
        self.lfs_threshold = lfs_threshold
        self.requests: list[tuple[str, str, str | None]] = []  # (method, raw path, Authorization header)
        self._lock = threading.RLock()  # ThreadingHTTPServer serves requests concurrently
        self._blobs: dict[str, bytes] = {}  # sha256 -> content (memory mode only)
        self._metas: dict[str, tuple[int, str]] = {}  # sha256 -> (size, git sha1)
        self._repos: dict[str, dict] = {}  # "dataset:owner/name" -> {type, id, private, branches, commits}
        self._counter = itertools.count()
        if self.storage is not None:
            (self.storage / "blobs").mkdir(parents=True, exist_ok=True)
            if (self.storage / "state.json").exists():
                self._repos = json.loads((self.storage / "state.json").read_text())
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle / public helpers
    def __enter__(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "FakeHub not started: use it as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, home: Path | str | None = None, token: str | None = None) -> dict[str, str]:
        """Environment variables pointing a huggingface_hub/datasets client (e.g. a subprocess) at this hub."""
        env = {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
        env.update({k: str(v) for k, v in (("HF_HOME", home), ("HF_TOKEN", token)) if v is not None})
        return env

    @property
    def repos(self) -> dict[str, dict]:
        """{repo_id: {"type", "private", "branches": {name: sha}}} (copies)."""
        with self._lock:
            return {r["id"]: {"type": r["type"], "private": r["private"], "branches": dict(r["branches"])} for r in self._repos.values()}

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Committed files of a revision (branch or commit sha): {path: content}."""
        with self._lock:
            tree = self._tree(self._repo(repo_type, repo_id), revision)[1]
            return {p: self._read(sha) for p, (sha, _) in sorted(tree.items())}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> list[dict]:
        """Commits reachable from `revision`, newest first, incl. the initial empty commit made by create."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            sha, out = self._tree(repo, revision)[0], []
            while sha:
                out.append({"id": sha, **{k: v for k, v in repo["commits"][sha].items() if k != "files"}})
                sha = repo["commits"][sha]["parent"]
            return out

    def put_files(
        self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "dataset", revision: str = "main", private: bool = False, message: str = "seed"
    ) -> str:
        """Seed a repo without going through the client (creates repo/branch if missing); returns the commit sha."""
        with self._lock:
            repo = self._repos.get(f"{repo_type}:{repo_id}") or self._create(repo_type, repo_id, private)
            repo["branches"].setdefault(revision, repo["branches"]["main"])
            big = self.lfs_threshold is not None
            ops = [(p, self._put_blob(d), big and len(d) >= self.lfs_threshold) for p, d in files.items()]
            return self._commit(repo, revision, message, lambda tree: tree.update({p: [s, lfs] for p, s, lfs in ops}))

    # ------------------------------------------------------------------ storage
    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if self.storage is None:
            self._blobs[sha] = data
        elif not (self.storage / "blobs" / sha).exists():
            tmp = self.storage / "blobs" / f"{sha}.{threading.get_ident()}.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.storage / "blobs" / sha)  # atomic: concurrent readers never see a partial blob
        return sha

    def _has_blob(self, sha: str) -> bool:
        return sha in self._blobs if self.storage is None else (self.storage / "blobs" / sha).exists()

    def _read(self, sha: str) -> bytes:
        return self._blobs[sha] if self.storage is None else (self.storage / "blobs" / sha).read_bytes()

    def _meta(self, sha: str) -> tuple[int, str]:
        """(size, git sha1) of a blob, cached: listings must not re-read big files."""
        if sha not in self._metas:
            data = self._read(sha)
            self._metas[sha] = (len(data), _git_sha1(data))
        return self._metas[sha]

    def _save(self) -> None:
        if self.storage is not None:
            (self.storage / "state.json").write_text(json.dumps(self._repos))

    # ------------------------------------------------------------------ repo model
    # A repo: branches {name: sha}; commits {sha: {parent, title, message, date, files: {path: [sha256, is_lfs]}}}.
    def _repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self._repos.get(f"{repo_type}:{repo_id}")
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _tree(self, repo: dict, revision: str) -> tuple[str, dict]:
        sha = repo["branches"].get(revision, revision)
        if sha not in repo["commits"]:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, repo["commits"][sha]["files"]

    def _create(self, repo_type: str, repo_id: str, private: bool) -> dict:
        repo = {"type": repo_type, "id": repo_id, "private": private, "created": _now(), "branches": {}, "commits": {}}
        self._repos[f"{repo_type}:{repo_id}"] = repo
        repo["branches"]["main"] = self._new_commit(repo, None, "initial commit", {})
        self._save()
        return repo

    def _new_commit(self, repo: dict, parent: str | None, title: str, files: dict) -> str:
        sha = hashlib.sha1(f"{repo['id']}:{parent}:{title}:{next(self._counter)}:{_now()}".encode()).hexdigest()
        repo["commits"][sha] = {"parent": parent, "title": title, "message": title, "date": _now(), "files": files}
        return sha

    def _commit(self, repo: dict, branch: str, title: str, apply) -> str:
        parent, tree = self._tree(repo, branch)
        tree = {p: list(v) for p, v in tree.items()}
        apply(tree)
        repo["branches"][branch] = sha = self._new_commit(repo, parent, title, tree)
        self._save()
        return sha

    def _entry(self, path: str, value: list | None, repo: dict, sha: str, expand: bool) -> dict:
        """A tree / paths-info item: a file if `value` is [sha256, is_lfs], else a directory."""
        if value is None:
            entry = {"type": "directory", "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest(), "path": path}
        else:
            blob, is_lfs = value
            size, oid = self._meta(blob)
            entry = {"type": "file", "oid": oid, "size": size, "path": path}
            if is_lfs:  # git stores a pointer file; its sha1 is the blob id, the sha256 identifies the content
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{blob}\nsize {size}\n".encode()
                entry.update(oid=_git_sha1(pointer), lfs={"oid": blob, "size": size, "pointerSize": len(pointer)})
        if expand:  # approximation: the revision's head commit stands for the last commit touching the path
            c = repo["commits"][sha]
            entry["lastCommit"] = {"id": sha, "title": c["title"], "date": c["date"]}
        return entry

    def _dirs(self, tree: dict) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, seg: list[str], query: dict, headers, body: bytes):
        """Returns (status, headers, body bytes | json-able | None); raises HubError."""
        q = lambda k, d=None: query.get(k, [d])[0]  # noqa: E731
        if seg[:2] == ["api", "whoami-v2"]:
            return 200, {}, {"type": "user", "name": "fake-user", "orgs": [], "auth": {}}
        if seg[:2] == ["api", "validate-yaml"]:
            return 200, {}, {"errors": [], "warnings": []}
        if seg[:2] == ["api", "repos"] and method == "POST":
            p = json.loads(body or b"{}")
            rtype, rid = p.get("type") or "model", f"{p.get('organization') or 'fake-user'}/{p['name']}"
            if seg[2] == "delete":
                self._repo(rtype, rid)
                del self._repos[f"{rtype}:{rid}"]
                self._save()
                return 200, {}, {}
            url = f"{self.endpoint}/{_PREFIX[rtype]}{rid}"
            if f"{rtype}:{rid}" in self._repos:  # create_repo(exist_ok=True) still reads "url" from the 409
                raise HubError(409, "You already created this repo", url=url)
            self._create(rtype, rid, p.get("visibility", p.get("private")) in ("private", True))
            return 200, {}, {"url": url, "name": rid, "id": rid}
        if seg[0] == "api" and len(seg) >= 4 and seg[1] in _TYPES:
            return self._api(method, _TYPES[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:], q, headers, body)
        if seg[0] == "lfs-upload" and method == "PUT":  # the upload URL our LFS batch answer hands out
            if hashlib.sha256(body).hexdigest() != seg[1]:
                raise HubError(400, "sha256 mismatch")
            self._put_blob(body)
            return 200, {}, None
        if seg[0] == "lfs-verify":
            if not self._has_blob(seg[1]):
                raise HubError(404, "object not found")
            return 200, {}, {}
        rtype, seg = (_TYPES[seg[0]], seg[1:]) if seg[0] in _TYPES and len(seg) > 3 else ("model", seg)
        if len(seg) >= 4 and seg[2] == "resolve":
            return self._resolve(method, self._repo(rtype, f"{seg[0]}/{seg[1]}"), seg[3], "/".join(seg[4:]), headers)
        if len(seg) == 6 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(self._repo(rtype, f"{seg[0]}/{seg[1][:-4]}"), json.loads(body))
        raise HubError(404, f"FakeHub: no route for {method} /{'/'.join(seg)}")

    def _api(self, method: str, rtype: str, rid: str, rest: list[str], q, headers, body: bytes):
        repo = self._repo(rtype, rid)
        what, rev = (rest + [None, None])[:2]
        if what is None or what == "revision":
            return 200, {}, self._info(repo, rev or "main", q("blobs", "false").lower() == "true")
        if what in ("xet-write-token", "xet-read-token"):
            raise HubError(501, "FakeHub has no Xet storage: run the client with HF_HUB_DISABLE_XET=1 (FakeHub.env()) or build FakeHub(lfs_threshold=None)")
        if what == "refs":
            refs: dict[bool, list] = {True: [], False: []}  # PR refs (refs/pr/N) are kept as branches
            for b, s in repo["branches"].items():
                refs[b.startswith("refs/")].append({"name": b, "ref": b if "/" in b else f"refs/heads/{b}", "targetCommit": s})
            return 200, {}, {"branches": refs[False], "converts": [], "tags": [], "pullRequests": refs[True]}
        if what == "branch":
            if method == "DELETE":
                repo["branches"].pop(rev, None)
            elif rev in repo["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{rev}")
            else:  # a new branch points at the starting point's commit (a copy of main by default)
                repo["branches"][rev] = self._tree(repo, json.loads(body or b"{}").get("startingPoint") or "main")[0]
            self._save()
            return 200, {}, {}
        if what == "commits":
            items = [
                {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"], "authors": [{"user": "fake-user"}]}
                for c in self.commits(rid, rev or "main", rtype)
            ]
            return 200, {}, items
        sha, tree = self._tree(repo, rev)
        if what == "tree":
            base, recursive = "/".join(rest[2:]), q("recursive", "false").lower() == "true"
            if base and base not in self._dirs(tree):
                raise HubError(404, f"Directory {base} not found", "EntryNotFound")
            pre = base + "/" if base else ""
            out = [(d, None) for d in sorted(self._dirs(tree)) if d.startswith(pre)]
            out += [(p, v) for p, v in sorted(tree.items()) if p.startswith(pre)]
            if not recursive:
                out = [(p, v) for p, v in out if "/" not in p[len(pre) :]]
            expand = q("expand", "false").lower() == "true"
            return 200, {}, [self._entry(p, v, repo, sha, expand) for p, v in out]
        if what == "paths-info":  # client sends a form (paths=a&paths=b&expand=..), accept JSON too
            form = json.loads(body) if body[:1] == b"{" else parse_qs(body.decode())
            paths, expand = form.get("paths", []), str(form.get("expand", "false")).lower() in ("true", "['true']")
            dirs = self._dirs(tree)
            return 200, {}, [self._entry(p, tree.get(p), repo, sha, expand) for p in paths if p in tree or p in dirs]
        if what == "preupload":
            files = []
            for f in json.loads(body)["files"]:
                lfs = self.lfs_threshold is not None and f["size"] >= self.lfs_threshold
                old = tree.get(f["path"])  # the oid of the current version lets the client skip unchanged files
                oid = None if old is None else old[0] if old[1] else self._meta(old[0])[1]
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            return 200, {}, {"files": files}
        if what == "commit":
            return self._do_commit(repo, rev, sha, q("create_pr") == "1", body)
        raise HubError(404, f"FakeHub: no route for /api/{rtype}s/{rid}/{'/'.join(rest)}")

    def _info(self, repo: dict, rev: str, blobs: bool) -> dict:
        sha, tree = self._tree(repo, rev)
        siblings = [{"rfilename": p} for p in sorted(tree)]
        for s in siblings if blobs else []:  # files_metadata=True: sizes, blob ids, LFS info
            e = self._entry(s["rfilename"], tree[s["rfilename"]], repo, sha, False)
            s.update(size=e["size"], blobId=e["oid"])
            if "lfs" in e:
                s["lfs"] = {"size": e["size"], "sha256": e["lfs"]["oid"], "pointerSize": e["lfs"]["pointerSize"]}
        return {
            "id": repo["id"],
            "author": repo["id"].split("/")[0],
            "sha": sha,
            "private": repo["private"],
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "createdAt": repo["created"],
            "lastModified": repo["commits"][sha]["date"],
        }

    def _do_commit(self, repo: dict, rev: str, head: str, create_pr: bool, body: bytes):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        if rev not in repo["branches"]:  # commits go to branches, not to commit shas
            raise HubError(400, f"Invalid rev id: {rev}", "RevisionNotFound")
        pr_url = None
        if create_pr:  # a PR is a refs/pr/N branch started from `rev`
            num = 1 + sum(b.startswith("refs/pr/") for b in repo["branches"])
            rev, pr_url = f"refs/pr/{num}", f"{self.endpoint}/{_PREFIX[repo['type']]}{repo['id']}/discussions/{num}"
            repo["branches"][rev] = head

        def apply(tree: dict) -> None:
            for op in lines:
                key, v = op["key"], op["value"]
                if key == "file":
                    tree[v["path"]] = [self._put_blob(base64.b64decode(v["content"])), False]
                elif key == "lfsFile":
                    if not self._has_blob(v["oid"]):
                        raise HubError(422, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                    tree[v["path"]] = [v["oid"], True]
                elif key == "deletedFile":
                    if tree.pop(v["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    for p in [p for p in tree if p.startswith(v["path"].rstrip("/") + "/")]:
                        del tree[p]
                elif key != "header":
                    raise HubError(400, f"FakeHub: unsupported commit operation {key}")

        sha = self._commit(repo, rev, header.get("summary") or "commit", apply)
        url = f"{self.endpoint}/{_PREFIX[repo['type']]}{repo['id']}/commit/{sha}"
        return 200, {}, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": pr_url}

    def _lfs_batch(self, repo: dict, payload: dict):
        # Only the "basic" transfer is offered: one PUT of the whole file to an URL of ours, then a verify POST.
        objects = []
        for o in payload["objects"]:
            obj = {"oid": o["oid"], "size": o["size"]}
            if not self._has_blob(o["oid"]):  # no "actions" = already stored, the client skips the upload
                obj["authenticated"] = True
                obj["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{o['oid']}"}, "verify": {"href": f"{self.endpoint}/lfs-verify/{o['oid']}"}}
            objects.append(obj)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def _resolve(self, method: str, repo: dict, rev: str, path: str, headers):
        sha, tree = self._tree(repo, rev)
        if path not in tree:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        blob, is_lfs = tree[path]
        data = self._read(blob)
        etag = blob if is_lfs else self._meta(blob)[1]  # LFS files: the Hub's etag is the sha256 of the content
        h = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if is_lfs:
            h.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        rng = headers.get("Range")
        if rng and rng.startswith("bytes="):  # single range only: "a-b", "a-" or "-n"
            a, b = rng[6:].split(",")[0].split("-")
            start, end = (len(data) - int(b), len(data) - 1) if a == "" else (int(a), int(b) if b else len(data) - 1)
            start, end = max(start, 0), min(end, len(data) - 1)
            if start > end:
                raise HubError(416, "Range not satisfiable")
            h["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, h, data[start : end + 1]
        return 200, h, data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries a Content-Length
    hub: FakeHub

    def log_message(self, *args) -> None:  # keep test output quiet
        return

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed uploads (LFS PUT of a file)
            out = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        self.hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
        body = self._body()
        url = urlsplit(self.path)
        seg = [unquote(s) for s in url.path.split("/")[1:]]  # unquote per segment: revisions may contain %2F
        try:
            with self.hub._lock:
                status, headers, payload = self.hub._route(self.command, seg + [""] * (2 - len(seg)), parse_qs(url.query), self.headers, body)
        except HubError as e:
            status, payload = e.status, {"error": str(e), **e.extra}
            headers = {"X-Error-Message": str(e), **({"X-Error-Code": e.code} if e.code else {})}
        except Exception as e:  # a bug here should surface as a readable 500, not a dropped connection
            status, headers, payload = 500, {"X-Error-Message": f"FakeHub: {e!r}"}, {"error": repr(e)}
        if payload is not None and not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        payload = payload or b""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle
