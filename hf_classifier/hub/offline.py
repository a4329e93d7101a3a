"""Reaching the Hugging Face Hub, or failing fast and clearly when it cannot be reached.

Without network, transformers and datasets retry for about 25 s before giving up with a generic
message. A short TCP probe tells us up front; unreachable Hubs switch loads to the local cache.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from huggingface_hub import constants


class HubUnavailableError(RuntimeError):
    """Something needed the Hub, the Hub could not be reached and the local cache did not have it."""


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    return os.path.exists(os.fspath(name_or_path))


def offline_mode_requested() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the Hub endpoint opens within `timeout` seconds."""
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def use_local_files_only(name_or_path: str | os.PathLike) -> bool:
    """Whether a `from_pretrained`/`load_dataset` call for `name_or_path` must stay on local files."""
    if is_local_path(name_or_path):
        return True
    return offline_mode_requested() or not hub_reachable()


def unavailable_message(kind: str, name: str, error: BaseException | None = None) -> str:
    why = "HF_HUB_OFFLINE is set" if offline_mode_requested() else f"{constants.ENDPOINT} cannot be reached"
    detail = f" ({type(error).__name__}: {str(error).splitlines()[0]})" if error else ""
    return (
        f"Cannot load {kind} '{name}': it is not a local folder, it is not in the local Hugging Face cache, "
        f"and {why}{detail}. Run once with network access to cache it (e.g. `hf download {name}`"
        f"{' --repo-type dataset' if kind == 'dataset' else ''}), or pass a local folder instead."
    )


@contextlib.contextmanager
def cache_only(enabled: bool = True) -> Iterator[None]:
    """Make datasets and huggingface_hub read only their local caches (as HF_HUB_OFFLINE=1 would)."""
    if not enabled:
        yield
        return
    import datasets.config

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
