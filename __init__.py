"""PVTT (Product Video Template Transfer) for ComfyUI: entry point of the custom-node pack.

ComfyUI imports this file at start-up, so it only registers the models/pvtt folder and the node
classes; torch, OpenCV and the pvtt_train stack are imported when a node first runs.
"""

import logging

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, paths, sample_previews

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

log = logging.getLogger("[PVTT]")

paths.register_model_folder()
if not paths.model_names():
    log.warning(paths.missing_model_message())
sample_previews.install_in_comfyui()  # the upload widgets' previews of samples/<name>
