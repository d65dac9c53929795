"""GPU requests: what ``gpu=`` on a function means, and which devices it matches.

A function asks for GPUs with a string, ``[COUNT:]MODEL``::

    @chalkcompute.function(gpu="nvidia-l4")          # one NVIDIA L4
    @chalkcompute.function(gpu="2:nvidia-a100")      # two A100s (any memory size or form factor)
    @chalkcompute.function(gpu="nvidia-a100-80gb")   # one 80 GB A100
    @chalkcompute.function(gpu="any")                # one GPU of any model

    >>> GpuRequest.parse("2:NVIDIA-A100")
    GpuRequest(count=2, model='nvidia-a100')
    >>> str(GpuRequest.parse("1:nvidia-l4"))
    'nvidia-l4'

- ``COUNT`` is a whole number from 1 to :data:`MAX_GPUS` (default 1). The
  replica gets that many devices to itself: GPUs are never shared between
  replicas.
- ``MODEL`` is letters, digits, ``-``, ``_`` and ``.``; it is matched case-
  insensitively and kept lower-case. ``any`` matches every GPU.

Matching rule (:meth:`GpuRequest.matches`), applied to the name the driver
reports for a device (NVML's ``nvmlDeviceGetName``):

1. Lower-case the request's model and the device name, and split both into
   tokens on anything that is not ``a-z`` or ``0-9``.
2. Drop the vendor words ``nvidia``, ``amd``, ``intel`` and ``tesla`` from both.
   ``tesla`` counts as a vendor word because older NVIDIA data-centre cards are
   reported as ``Tesla T4`` or ``Tesla V100-SXM2-16GB``: dropping it lets
   ``nvidia-t4`` match them. Brand words such as ``geforce``, ``quadro`` or
   ``rtx`` are *not* dropped: they are part of the model.
3. The request's first remaining token (the model, e.g. ``a100``) must equal the
   device's first remaining token, so ``l4`` does not match an ``L40S``.
4. Every further request token (e.g. ``80gb``) must appear somewhere among the
   device's tokens, in any order.

======================== ============================ =======
request                  device name                  matches
======================== ============================ =======
nvidia-a100              NVIDIA A100-SXM4-80GB        yes
nvidia-a100              NVIDIA A100 80GB PCIe        yes
nvidia-a100-80gb         NVIDIA A100-SXM4-80GB        yes
nvidia-a100-80gb         NVIDIA A100-SXM4-40GB        no
nvidia-l4                NVIDIA L4                    yes
nvidia-l4                NVIDIA L40S                  no
nvidia-h100              NVIDIA H100 80GB HBM3        yes
nvidia-geforce-rtx-4090  NVIDIA GeForce RTX 4090      yes
nvidia-rtx-4090          NVIDIA GeForce RTX 4090      no (``rtx`` != ``geforce``)
nvidia-t4                Tesla T4                     yes
any                      (every device)               yes
======================== ============================ =======

A model made of vendor words only (``gpu="nvidia"``) names no model and is
refused: use ``any`` for "any GPU".

This module is stdlib-only: the SDK uses it to validate ``gpu=`` when a function
is declared, and chalkd uses it to place replicas (see :mod:`chalkd.gpus`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ANY_MODEL", "MAX_GPUS", "VENDOR_WORDS", "GpuRequest", "model_tokens"]

#: The most GPUs one replica may ask for; more is almost certainly a typo, and no
#: single host this daemon runs on has more.
MAX_GPUS = 16

#: The model that matches every device.
ANY_MODEL = "any"

#: Words dropped from both sides before matching (see the module docstring).
VENDOR_WORDS = frozenset({"nvidia", "amd", "intel", "tesla"})

_COUNT_RE = re.compile(r"[0-9]+")
_MODEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TOKEN_SPLIT_RE = re.compile(r"[^a-z0-9]+")
_EXAMPLES = "e.g. 'nvidia-l4', '2:nvidia-a100' or 'any'"


def model_tokens(name: str) -> list[str]:
    """A model or device name as matching sees it: lower-case tokens, vendor words dropped.

    >>> model_tokens("NVIDIA A100-SXM4-80GB")
    ['a100', 'sxm4', '80gb']
    """
    return [t for t in _TOKEN_SPLIT_RE.split(name.lower()) if t and t not in VENDOR_WORDS]


@dataclass(frozen=True)
class GpuRequest:
    """``count`` GPUs of ``model`` (lower-case, or ``"any"``), for one replica alone."""

    count: int
    model: str

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as parse(), so a GpuRequest is always valid.
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise TypeError(f"gpu count must be an int, got {self.count!r}")
        if not 1 <= self.count <= MAX_GPUS:
            raise ValueError(f"gpu count must be between 1 and {MAX_GPUS}, got {self.count}")
        if not isinstance(self.model, str):
            raise TypeError(f"gpu model must be a str, got {type(self.model).__name__}")
        if not _MODEL_RE.fullmatch(self.model):
            raise ValueError(f"invalid gpu model {self.model!r}: use lower-case letters, digits, '-', '_' "
                             f"or '.' ({_EXAMPLES})")
        if self.model != ANY_MODEL and not model_tokens(self.model):
            raise ValueError(f"gpu model {self.model!r} names a vendor but no model: say which one "
                             f"(e.g. 'nvidia-l4'), or 'any' for any GPU")

    @classmethod
    def parse(cls, value: str | GpuRequest) -> GpuRequest:
        """Parse ``gpu=`` (``"nvidia-l4"``, ``"2:nvidia-a100"``, ``"any"``); a GpuRequest passes through.

        Raises TypeError for a non-string and ValueError, naming ``gpu`` and the
        value, for anything else that is not ``[COUNT:]MODEL``.
        """
        if isinstance(value, GpuRequest):
            return value
        if not isinstance(value, str):
            raise TypeError(f"gpu must be a str such as 'nvidia-l4' or '2:nvidia-a100', "
                            f"got {type(value).__name__} {value!r}")
        if not value:
            raise ValueError(f"invalid gpu={value!r}: it must not be empty; name a GPU model, {_EXAMPLES}")
        if any(c.isspace() for c in value):
            raise ValueError(f"invalid gpu={value!r}: whitespace is not allowed ({_EXAMPLES})")
        count_text, sep, model = value.rpartition(":")
        count = 1
        if sep:
            if not _COUNT_RE.fullmatch(count_text):
                raise ValueError(f"invalid gpu={value!r}: the count before ':' must be a whole number "
                                 f"from 1 to {MAX_GPUS}, got {count_text!r}")
            count = int(count_text)
            if not 1 <= count <= MAX_GPUS:
                raise ValueError(f"invalid gpu={value!r}: the count must be from 1 to {MAX_GPUS}, got {count}")
        model = model.lower()
        if not model:
            raise ValueError(f"invalid gpu={value!r}: no model after ':' ({_EXAMPLES})")
        if model.isdigit() and int(model) <= MAX_GPUS:
            # "2" reads as a model named "2", which no GPU is: almost surely a count without a type.
            n = count if sep else int(model)
            plain = "any" if n == 1 else f"{n}:any"
            raise ValueError(f"invalid gpu={value!r}: {model!r} is not a GPU type but looks like a count; for "
                             f"{n} GPU{'s' if n != 1 else ''} of any type write {plain!r}, or name the model "
                             f"({n}:nvidia-l4)")
        if not _MODEL_RE.fullmatch(model):
            raise ValueError(f"invalid gpu={value!r}: a model is letters, digits, '-', '_' or '.', "
                             f"starting with a letter or digit ({_EXAMPLES})")
        if model != ANY_MODEL and not model_tokens(model):
            raise ValueError(f"invalid gpu={value!r}: it names a vendor but no model; say which one "
                             f"(e.g. 'nvidia-l4'), or 'any' for any GPU")
        return cls(count, model)

    def matches(self, device_name: str) -> bool:
        """Whether a device the driver calls ``device_name`` is this model (rule in the module docstring)."""
        if self.model == ANY_MODEL:
            return True
        want = model_tokens(self.model)
        have = model_tokens(device_name)
        if not have or want[0] != have[0]:
            return False
        return all(token in have for token in want[1:])

    def describe(self) -> str:
        """For messages: ``"2 x nvidia-a100"``, ``"1 x any GPU"``."""
        return f"{self.count} x {'any GPU' if self.model == ANY_MODEL else self.model}"

    def __str__(self) -> str:
        # The canonical form: parse(str(r)) == r, and what the SDK sends to chalkd.
        return self.model if self.count == 1 else f"{self.count}:{self.model}"
