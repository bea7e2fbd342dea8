"""Models by name: torchvision backbones, the wedge-profile MLP and 1-D CNN, all multi-task (``AlloyNet``).

``create_model(name, ...)`` builds one, ``list_models()`` names the registered architectures; a trained model
is rebuilt with ``alloynet.models.checkpoint.load_model``. What an exported model takes and returns is declared
once, in ``alloynet.contract``; ``AlloyNet.forward`` and ``alloynet.export.graph.ServingGraph`` say how they
produce it.
"""

from alloynet.models import backbones as _backbones  # noqa: F401  (registers the torchvision trunks)
from alloynet.models import profile as _profile  # noqa: F401  (registers fnn and profile_cnn)
from alloynet.models.architectures import ARCH_DEFAULTS, arch_defaults, create_model, list_models, register_model
from alloynet.models.heads import REGRESSION_TARGETS, AlloyNet, MultiTaskHead, activation_names, make_activation

__all__ = [
    "ARCH_DEFAULTS",
    "AlloyNet",
    "MultiTaskHead",
    "REGRESSION_TARGETS",
    "activation_names",
    "arch_defaults",
    "create_model",
    "list_models",
    "make_activation",
    "register_model",
]
