"""The model in one import: the forward pass (helpers.transformer, notebooks 02-07) and generation
(helpers.generate, notebook 08). `from helpers.model import forward, generate, KVCache, ...` keeps working;
the code lives in those two modules.
"""
from helpers.device import DEVICE, available_devices, pick_device
from helpers.generate import KVCache, check_sampling, generate, kept_distribution, sample_next
from helpers.transformer import (CHUNK, FP32_AUTO_LIMIT, FP32_COPY_LIMIT, PRECISIONS, RECORD_LIMIT, apply_rope,
                                 as_index, attention, auto_fp32, causal_mask, check_precision, check_tokens,
                                 count_nonfinite, embed, feed_forward, forward, forward_order, fp32, fp32_bytes,
                                 fp32_weights, layer, linear, nbytes, nonfinite_cause, record_bytes, rms_norm,
                                 rope_frequencies, rope_rotations, scale_frequencies, upcast_rows)

__all__ = ["CHUNK", "DEVICE", "FP32_AUTO_LIMIT", "FP32_COPY_LIMIT", "KVCache", "PRECISIONS", "RECORD_LIMIT",
           "apply_rope", "as_index", "attention", "auto_fp32", "available_devices", "causal_mask", "check_precision",
           "check_sampling", "check_tokens", "count_nonfinite", "embed", "feed_forward", "forward", "forward_order",
           "fp32", "fp32_bytes", "fp32_weights", "generate", "kept_distribution", "layer", "linear", "nbytes",
           "nonfinite_cause", "pick_device", "record_bytes", "rms_norm", "rope_frequencies", "rope_rotations",
           "sample_next", "scale_frequencies", "upcast_rows"]
