"""Models by name: torchvision backbones, the wedge-profile MLP and 1-D CNN, all multi-task.

The model contract (export, serving and the registry depend on it; keep it exactly)
-----------------------------------------------------------------------------------
* Every model is an ``nn.Module`` (``AlloyNet``) whose ``forward`` takes the RAW capture: float32
  [B, C, H, W] of detector ADU values (uint16 range; C = 1, or one channel per kVp setting; any H, W the
  trunk accepts: at least 32x32 for the 2-D backbones, any size for ``fnn`` / ``profile_cnn``).
* It does its own preprocessing inside (``model.preprocess``, an ``alloynet.data.transforms.Preprocess``
  with buffers: dark/flat correction -> -ln T -> standardisation), so exported graphs match training.
* It returns ``{"logits": [B, K], "thickness_mm": [B], "a0": [B], "mu_eff": [B]}``: class logits in the
  order of ``alloynet.data.CLASS_NAMES`` and regression outputs in physical units (plate thickness in mm,
  A0 = -ln T at zero wedge, mu_eff = A0 / thickness in 1/cm), de-standardised inside with the buffers
  ``target_mean`` / ``target_std``.
* ``create_model(name, num_classes, in_channels, preprocess, activation=None, target_stats=None,
  dropout=0.0, **kw) -> AlloyNet`` builds one; ``list_models()`` names the registered architectures
  (resnet18, resnet34, resnet50, vgg16, efficientnet_b0, fnn, profile_cnn). ``activation`` is one of
  relu, leaky_relu, gelu, silu (default: the architecture's entry in ``ARCH_DEFAULTS``). ImageNet weights
  only from a local file: ``pretrained="/path/to/torchvision_state_dict.pth"``.
* A trained model is rebuilt from its checkpoint with ``alloynet.models.checkpoint.load_model(path) ->
  (model, meta)`` (``torch.load(weights_only=True)``; ``meta`` has class_names, manifest_hash,
  image_size [H, W], channels, arch, the resolved config and the model spec).
"""
from alloynet.models.heads import REGRESSION_TARGETS, AlloyNet, MultiTaskHead, activation_names, make_activation
from alloynet.models.registry import ARCH_DEFAULTS, arch_defaults, create_model, list_models, register_model
from alloynet.models import backbones as _backbones  # noqa: F401  (registers the torchvision trunks)
from alloynet.models import profile as _profile  # noqa: F401  (registers fnn and profile_cnn)

__all__ = [
    "ARCH_DEFAULTS", "AlloyNet", "MultiTaskHead", "REGRESSION_TARGETS", "activation_names", "arch_defaults",
    "create_model", "list_models", "make_activation", "register_model",
]
