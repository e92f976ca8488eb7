"""SpikingJelly's own SEW-ResNet code, importable beside a torch that has no working torchvision.

`spikingjelly.activation_based.model.sew_resnet` imports torchvision at load for one name,
`load_state_dict_from_url`, used only to download pretrained ANN weights. The torchvision wheels that
install beside the torch 2.13 CPU build fail at import (`operator torchvision::nms does not exist`), which
would keep SpikingJelly's SEW-ResNet code out of reach. When (and only when) torchvision cannot be
imported, this module loads SpikingJelly's file with a stand-in for that one name that refuses to
download; the network code that runs is SpikingJelly's, unchanged. Nothing here downloads.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ..errors import SbcError


def _no_download(*_args: Any, **_kwargs: Any) -> None:
    raise SbcError("pretrained weights are not downloaded by sbc-onnx: build the model with pretrained=False "
                   "and load a state_dict from disk")


def sew_resnet_module() -> types.ModuleType:
    """`spikingjelly.activation_based.model.sew_resnet` (BasicBlock, Bottleneck, SEWResNet, sew_resnet18...)."""
    name = "spikingjelly.activation_based.model.sew_resnet"
    if name in sys.modules:
        return sys.modules[name]
    try:
        import torchvision.models.utils  # noqa: F401  (the name SpikingJelly's file imports first)
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or torchvision's RuntimeError beside a torch it was not built for
        _stand_in_torchvision()
    import importlib
    return importlib.import_module(name)


def _stand_in_torchvision() -> None:
    """Put a `torchvision.models.utils` holding only `load_state_dict_from_url` (refusing) in sys.modules,
    leaving any real torchvision modules that did import untouched."""
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]  # a half-imported, broken torchvision would be found first otherwise
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = _no_download
    tv.models, models.utils = models, utils
    tv.__path__ = []  # a package, so that `import torchvision.x` of anything else fails cleanly
    models.__path__ = []
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.utils": utils})
