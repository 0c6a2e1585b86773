"""torch's oneDNN operations (CPU only), looked up once where this build of torch has them."""
from __future__ import annotations

from typing import Any

import torch


def onednn_op(name: str) -> Any | None:
    """``torch.ops.mkldnn.<name>.default``, or None where torch lacks oneDNN or that operation."""
    try:
        return getattr(torch.ops.mkldnn, name).default if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None
