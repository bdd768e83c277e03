"""params.json -> ModelArgs, with every known key's type and range checked at load."""
import dataclasses
import difflib
import math
from dataclasses import dataclass, field


class CheckpointError(ValueError):
    """Bad checkpoint input; the message names the file or value and the fix."""


INTS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len",
        "rope_original_context")
FLOATS = ("norm_eps", "rope_theta", "ffn_dim_multiplier", "rope_scaling_factor", "rope_low_freq_factor",
          "rope_high_freq_factor")
# keys of Meta's params.json files (llama-models' ModelArgs, Llama 2/3/3.1/3.2/4) that we do not use:
# kept in extra, never reported as typos
META_KEYS = {"max_batch_size", "vision_chunk_size", "vision_max_num_chunks", "vision_num_cross_attention_layers",
             "vision_model", "vision_args", "quantization_args", "lora_args", "moe_args", "hidden_dim",
             "rope_freq_base", "head_dim", "ffn_exp", "attention_chunk_size", "nope_layer_interval",
             "use_qk_norm", "attn_temperature_tuning", "floor_scale", "attn_scale"}


def bad(name, v, want, right_type=False):
    got = "" if right_type else f", not a {type(v).__name__}"
    fix = "write it without quotes" if isinstance(v, str) else "fix the value in the file"
    return CheckpointError(f"params.json: {name}={v!r} must be {want}{got}; {fix}")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = False
    rope_scaling_factor: float = 8.0      # llama 3.1 scaling, as in Meta's apply_scaling
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    max_seq_len: int = 8192
    extra: dict = field(default_factory=dict)  # params.json keys we do not use, kept as given

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in INTS:
            v = getattr(self, name)
            if not is_int(v) or v <= 0:
                raise bad(name, v, "a positive integer", is_int(v))
        for name in FLOATS:
            v = getattr(self, name)
            if v is None and name == "ffn_dim_multiplier":
                continue
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not (number and math.isfinite(v) and v > 0):
                raise bad(name, v, "a positive finite number" + (" or null" * (name == "ffn_dim_multiplier")), number)
            setattr(self, name, float(v))  # ints are fine where Meta writes floats
        if not isinstance(self.use_scaled_rope, bool):  # "false" is truthy: it would turn scaling on
            raise bad("use_scaled_rope", self.use_scaled_rope, "true or false (a JSON boolean)")
        if self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise CheckpointError(f"params.json: rope_high_freq_factor={self.rope_high_freq_factor} must be greater "
                                  f"than rope_low_freq_factor={self.rope_low_freq_factor} (Meta uses 4 and 1)")
        if not isinstance(self.extra, dict):
            raise bad("extra", self.extra, "a dict")
        if self.dim % self.n_heads:
            raise CheckpointError(f"params.json: dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise CheckpointError(f"params.json: n_heads={self.n_heads} is not a multiple of "
                                  f"n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise CheckpointError(f"params.json: head_dim={self.head_dim} must be even for RoPE")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def n_rep(self):
        """query heads per kv head (GQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def hidden_dim(self):
        """SwiGLU hidden size, Meta's formula: 2/3 of 4*dim, times the multiplier, rounded up."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_params(cls, params, source="params.json"):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size") if k not in params]
        if missing:
            raise CheckpointError(f"{source}: missing key(s) {missing}; a Llama 3 params.json has "
                                  "dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of, ...")
        for k in params:  # a misspelt key would be kept in extra and its default used: silently wrong
            near = [] if k in names or k in META_KEYS else difflib.get_close_matches(k, names, 1, 0.75)
            if near:
                raise CheckpointError(f"{source}: unknown key {k!r}; did you mean {near[0]!r}? Fix its spelling")
        known = {k: v for k, v in params.items() if k in names}
        try:
            return cls(**known, extra={k: v for k, v in params.items() if k not in names})
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {str(e).removeprefix('params.json: ')}") from None

    def to_params(self):
        """params.json dict: the keys we were given back, in Meta's spelling."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) != f.default}
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                  "ffn_dim_multiplier", "norm_eps", "rope_theta"):
            out[k] = getattr(self, k)
        return {**out, **self.extra}
