"""Engine registry: names to implementations, and the ``auto`` choice.

``get_engine("caffe" | "torch" | "auto", gpu=None)`` returns ``(engine, reason)``; the reason is
printed by stages and written into their manifests.
"""
from __future__ import annotations

import importlib

from harrison.engines.base import Engine, NetRunner, TrainResult
from harrison.engines.caffe.root import explicit_setting
from harrison.errors import HarrisonError

ENGINES: dict[str, str] = {
    "caffe": "harrison.engines.caffe.engine:CaffeEngine",
    "torch": "harrison.engines.torch.engine:TorchEngine",
}
ENGINE_CHOICES = ("auto", *ENGINES)

__all__ = ["ENGINES", "ENGINE_CHOICES", "Engine", "NetRunner", "TrainResult", "engine_class", "get_engine"]


def engine_class(name: str) -> type[Engine]:
    """The class registered under ``name``."""
    try:
        module_name, attr = ENGINES[name].split(":")
    except KeyError:
        raise HarrisonError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}") from None
    return getattr(importlib.import_module(module_name), attr)


def get_engine(name: str = "auto", gpu: int | None = None) -> tuple[Engine, str]:
    """Build the engine called ``name`` on CPU (``gpu=None``) or GPU ``gpu``, with the reason for the choice.

    ``auto`` takes real Caffe when it is found and can run on the asked device, else the torch engine.
    """
    if name != "auto":
        engine, reason = engine_class(name).create(gpu), f"--engine {name} asked for"
    else:
        caffe_cls = engine_class("caffe")
        found, why = caffe_cls.available(gpu)
        setting = explicit_setting()
        if setting and not caffe_cls.available(None)[0]:
            raise HarrisonError(f"{setting} is set, but real Caffe does not run there: {why}")
        if found:
            engine, reason = caffe_cls.create(gpu), f"auto: real Caffe found ({why})"
        else:
            engine, reason = engine_class("torch").create(gpu), f"auto: torch engine, since real Caffe is not usable ({why})"
    engine.chosen_because = reason
    return engine, reason
