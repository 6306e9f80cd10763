"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UsageError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'X'?)' for the closest of ``choices`` to a name the user typed, '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Exceptions of the libraries masklam reads remote data through, by module and class name: a failure to reach a
# server (no network, a wrong endpoint, refused credentials) rather than a mistake in masklam.
NETWORK_ERRORS = {
    "httpx": ("TransportError", "HTTPStatusError"),
    "requests.exceptions": ("ConnectionError", "Timeout", "HTTPError"),
    "urllib3.exceptions": ("HTTPError",),
    "aiohttp": ("ClientError",),
    "botocore.exceptions": ("EndpointConnectionError", "NoCredentialsError", "ClientError", "ConnectTimeoutError", "ReadTimeoutError"),
    "huggingface_hub.errors": ("HfHubHTTPError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"),
}


def _network_classes() -> tuple[type[BaseException], ...]:
    import socket
    import sys

    classes: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module_name, names in NETWORK_ERRORS.items():
        module = sys.modules.get(module_name)  # not imported: none of its errors can have been raised
        classes += [getattr(module, name) for name in names if module is not None and isinstance(getattr(module, name, None), type)]
    return tuple(classes)


def network_error(error: BaseException) -> UsageError | None:
    """A one-line UsageError for a failure to reach a server anywhere in ``error``'s chain; None for anything else."""
    classes = _network_classes()
    chain, current = [], error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    urls = [url for url in map(_request_url, chain) if url]
    for current in chain:
        if isinstance(current, classes) and not isinstance(current, BrokenPipeError):  # a closed pipe is local
            text = " ".join(str(current).split()) or type(current).__name__
            text = text if len(text) <= 200 else text[:197] + "..."
            server = f"the server of {urls[0]}" if urls else "the server"
            return UsageError(
                f"could not reach {server} ({type(current).__name__}: {text}): check the network, the URL and the "
                "credentials (HF_TOKEN for hf://, AWS_* for s3://), or `masklam pull` the dataset and pass its folder; "
                "re-running resumes"
            )
    return None


def _request_url(error: BaseException) -> str | None:
    """The URL an HTTP library's error was about, without its query (which may hold a signature)."""
    try:
        url = getattr(getattr(error, "request", None), "url", None)
    except Exception:  # httpx raises when an error has no request
        return None
    return str(url).split("?")[0] if url else None


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # out of space, or over quota


@contextmanager
def naming_full_disk(path: Path | str) -> Iterator[None]:
    """Re-raise a full disk that names no file (a write() into an open file, zarr's store) as one naming
    ``path``, so the one-line message (``disk_full``) says where it was writing."""
    try:
        yield
    except OSError as error:
        if error.errno in FULL_DISK_ERRNOS and not error.filename:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def disk_full(error: BaseException) -> str | None:
    """One line for a write that ran out of space (ENOSPC, or EDQUOT: over quota) anywhere in ``error``'s chain,
    naming the file when the OS said which; None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS:
            where = f" while writing {error.filename}" if error.filename else ""
            return f"no space left on the device{where}: free some space (or choose another --out) and re-run the same command: it resumes"
        error = error.__cause__ or error.__context__
    return None
