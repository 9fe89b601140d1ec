"""Fail fast when the Hugging Face Hub cannot be reached.

Without a network, huggingface_hub retries every request with backoff, so a command that names a Hub id
spends half a minute printing retry warnings before it can say what to do. The commands that may touch the
Hub first try one TCP connection to the endpoint; when that fails they run in huggingface_hub's offline mode
(what `HF_HUB_OFFLINE=1` does), so cached files still load and anything else fails at once with the
command's offline hint.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from huggingface_hub import constants

logger = logging.getLogger(__name__)

# Behind a proxy the endpoint may be unreachable directly yet fine through the proxy: no probe there.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def hub_reachable(endpoint: str | None = None, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (`HF_ENDPOINT`, https://huggingface.co by default) opens."""
    url = urlparse(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def offline_when_hub_unreachable() -> Iterator[None]:
    """Run the body in huggingface_hub's offline mode if the Hub cannot be reached; restore it afterwards."""
    if constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in PROXY_VARIABLES) or hub_reachable():
        yield
        return
    logger.warning(
        f"The Hugging Face Hub ({constants.ENDPOINT}) cannot be reached: using local files and the cache only, "
        "as with HF_HUB_OFFLINE=1."
    )
    import datasets  # the commands that reach here load data anyway

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def uses_hub(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a CLI command that may download from the Hub (see the module docstring)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with offline_when_hub_unreachable():
            return command(*args, **kwargs)

    return wrapper
