"""The PVTT node set: one registry, so ids and display names are declared in exactly one place.

Node ids are a stable API (saved workflows refer to them): never rename one, only add.
Importing this package is cheap: node modules import torch, OpenCV and pvtt_train only when a
node runs.
"""

from .accel_nodes import PVTTAccelerate
from .compare_nodes import PVTTCompareModels
from .engine_nodes import PVTTOnnxRuntime, PVTTTensorRT
from .mask_tools import PVTTMaskFromBox, PVTTMaskGrow, PVTTMaskPreview, PVTTMatchMask
from .masking_nodes import PVTTBackgroundPreserve
from .media_nodes import PVTTLoadImage, PVTTLoadVideo, PVTTSaveVideo
from .model_nodes import PVTTLoadModel
from .native_nodes import PVTTFewStepSampler, PVTTStudentSigmas, PVTTVACEConditioning
from .sampling_nodes import PVTTTemplateTransfer

_NODES = (
    (PVTTLoadModel, "PVTT Load Model"),
    (PVTTLoadVideo, "PVTT Load Video"),
    (PVTTLoadImage, "PVTT Load Image"),
    (PVTTTemplateTransfer, "PVTT Template Transfer"),
    (PVTTBackgroundPreserve, "PVTT Background Preserve"),
    (PVTTSaveVideo, "PVTT Save Video"),
    (PVTTAccelerate, "PVTT Accelerate"),
    (PVTTOnnxRuntime, "PVTT ONNX Runtime"),
    (PVTTTensorRT, "PVTT TensorRT"),
    (PVTTCompareModels, "PVTT Compare Models"),
    (PVTTMaskFromBox, "PVTT Mask From Box"),
    (PVTTMaskGrow, "PVTT Mask Grow/Shrink/Feather"),
    (PVTTMaskPreview, "PVTT Mask Overlay Preview"),
    (PVTTMatchMask, "PVTT Match Mask to Video"),
    (PVTTStudentSigmas, "PVTT Student Sigmas"),
    (PVTTFewStepSampler, "PVTT Few-Step Sampler"),
    (PVTTVACEConditioning, "PVTT VACE Conditioning"),
)

NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: name for cls, name in _NODES}
