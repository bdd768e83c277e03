"""Meta's model-parallel checkpoints: consolidated.00.pth ... consolidated.NN.pth, one file per GPU.

Meta ran the 70B on eight GPUs in tensor (model) parallel and saved it the way it ran: file r holds rank r's
slice of every matrix. Column-parallel matrices (wq, wk, wv, w1, w3, output, and Llama 3's vocab-parallel
tok_embeddings) are cut along dim 0, their output rows; row-parallel ones (wo, w2) along dim 1, their input
columns; norms are whole in every file. With more ranks than kv heads, each rank holds a copy of the one kv
head its query heads use (ranks r*world/n_kv_heads ... share kv head r).

load_shards merges lazily: ShardedWeights[name] concatenates the mmap'd slices of that one tensor when it is
used, so memory holds one merged tensor at a time, never the model.
"""
import shutil
import weakref
from collections.abc import Mapping
from pathlib import Path

import torch

from helpers.files import atomic_write, write_json
from helpers.model_dir import SHARD, check_not_bundled
from helpers.params import CheckpointError
from helpers.state_dict import check_weights, expected_shapes, load_state_dict

COLUMN = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "feed_forward.w1.weight",
          "feed_forward.w3.weight", "output.weight", "tok_embeddings.weight")   # split dim 0
ROW = ("attention.wo.weight", "feed_forward.w2.weight")                          # split dim 1
KV = ("attention.wk.weight", "attention.wv.weight")
COPIES = "kv copies"  # layout of wk/wv with more ranks than kv heads


def shard_name(rank):
    return f"consolidated.{rank:02d}.pth"


def tail(name):
    """layers.3.attention.wq.weight -> attention.wq.weight; top-level names stay."""
    return name.split(".", 2)[2] if name.startswith("layers.") else name


def meta_axis(name):
    """The dim Meta's fairscale layers split name along: 0 (column-parallel), 1 (row-parallel), None (replicated)."""
    return 0 if tail(name) in COLUMN else 1 if tail(name) in ROW else None


def split_problems(args, world):
    """Why this model cannot be split over world ranks Meta's way (empty: it can)."""
    why = []
    if args.n_heads % world:
        why.append(f"n_heads={args.n_heads} (each rank owns whole query heads)")
    if args.n_kv_heads % world and world % args.n_kv_heads:
        why.append(f"n_kv_heads={args.n_kv_heads} (each rank owns whole kv heads, or a copy of one)")
    if args.hidden_dim % world:
        why.append(f"hidden_dim={args.hidden_dim}")
    if args.vocab_size % world:
        why.append(f"vocab_size={args.vocab_size}")
    return why


def world_sizes(args):
    """Every rank count this model splits over, 1 first."""
    return [n for n in range(1, args.n_heads + 1) if not split_problems(args, n)]


def check_world(args, world):
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise CheckpointError(f"world={world!r} must be a positive integer (the number of shards)")
    why = split_problems(args, world)
    if why:
        raise CheckpointError(f"cannot split this model over {world} ranks: {world} does not divide "
                              f"{', '.join(why)}; use one of {world_sizes(args)}")


def rank_shapes(args, world):
    """name -> shape of that tensor in every rank's file."""
    out = {}
    for name, s in expected_shapes(args).items():
        a = meta_axis(name)
        if tail(name) in KV and world > args.n_kv_heads:
            out[name] = (s[0] // args.n_kv_heads, s[1])              # one kv head
        elif a is None:
            out[name] = s
        else:
            out[name] = tuple(n // world if i == a else n for i, n in enumerate(s))
    return out


def rank_slice(name, t, args, world, rank):
    """rank's part of the full tensor t, as its own contiguous tensor (torch.save of a view writes it all)."""
    a = meta_axis(name)
    if a is None:
        return t.clone()
    if tail(name) in KV and world > args.n_kv_heads:
        return t.chunk(args.n_kv_heads, 0)[rank // (world // args.n_kv_heads)].clone()
    return t.chunk(world, a)[rank].clone()


def rank_weights(weights, args, world, rank):
    """The state dict rank `rank` of `world` holds; tied embeddings stay tied (no output.weight)."""
    check_world(args, world)
    check_full(weights, args)
    return {name: rank_slice(name, weights[name], args, world, rank) for name in stored_names(weights)}


def stored_names(weights):
    """the names a shard file holds: every one but a tied output.weight (it is tok_embeddings)."""
    tied = "output.weight" not in weights or weights["output.weight"] is weights["tok_embeddings.weight"]
    return [name for name in weights if not (tied and name == "output.weight")]


def check_full(weights, args):
    """weights (a dict or ShardedWeights) hold exactly the tensors args implies, before they are cut."""
    # ShardedWeights and a GGUF file's weights (helpers.gguf_file) know shapes without merging or dequantizing
    shape = weights.shape if callable(getattr(weights, "shape", None)) else lambda k: weights[k].shape
    want = expected_shapes(args)
    bad = [f"{k}: {'missing' if k not in weights else tuple(shape(k))} != {s}" for k, s in want.items()
           if (k not in weights and k != "output.weight") or (k in weights and tuple(shape(k)) != s)]
    bad += [f"{k}: not in params.json's model" for k in weights if k not in want]
    if bad:
        raise CheckpointError(f"weights do not match args (dim={args.dim}, n_layers={args.n_layers}, n_heads="
                              f"{args.n_heads}, n_kv_heads={args.n_kv_heads}): {'; '.join(bad[:4])}")


def split_weights(weights, args, world):
    """Full weights -> the world state dicts of a Meta model-parallel checkpoint. Each tensor is read once
    for all ranks (a GGUF file's is dequantized at each read)."""
    check_world(args, world)
    check_full(weights, args)
    out = [{} for _ in range(world)]
    for name in stored_names(weights):
        t = weights[name]
        for r in range(world):
            out[r][name] = rank_slice(name, t, args, world, r)
    return out


def remove_stale_shards(out, world):
    """after writing `world` shards: drop consolidated.NN.pth with NN >= world, left by an older, larger
    split, which would make the dir load as a checkpoint of mixed shards."""
    for p in Path(out).glob("consolidated.*.pth"):
        if SHARD.fullmatch(p.name) and int(p.name[13:15]) >= world:
            p.unlink()


def write_shards(out_dir, args, weights, world, tokenizer=None, overwrite_bundled=False):
    """params.json + consolidated.00.pth ... (world files), each replaced atomically; shards of an older,
    larger split are removed. One rank's slices are in memory at a time."""
    check_world(args, world)
    check_not_bundled(out_dir, overwrite_bundled)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for r in range(world):  # rank r's slices exist only while its file is written
        atomic_write(out / shard_name(r), lambda p, r=r: torch.save(rank_weights(weights, args, world, r), p))
    remove_stale_shards(out, world)
    write_json(out / "params.json", args.to_params())
    if tokenizer is not None:
        atomic_write(out / "tokenizer.model", lambda p: shutil.copyfile(tokenizer, p))
    return out


class ShardedWeights(Mapping):
    """name -> the full tensor, concatenated from the shards' mmap'd slices when it is used: nothing is merged
    up front, and a merged tensor lives only while someone holds it (the cache is weak: while it lives, every
    access returns that same tensor, so identity-based code such as tied-embedding checks still works).
    Replicated tensors (norms) are rank 0's mmap'd tensor, without a copy."""

    def __init__(self, shards, layout, n_kv_heads):
        self.shards, self.layout, self.world = shards, layout, len(shards)  # layout: name -> (stored key, axis)
        self.step = max(1, self.world // n_kv_heads)                        # ranks that share one kv head
        self.alive = weakref.WeakValueDictionary()                          # stored key -> merged tensor

    def __getitem__(self, name):
        key, axis = self.layout[name]
        parts = [sd[key] for sd in self.shards]
        if axis is None:
            return parts[0]
        t = self.alive.get(key)
        if t is None:
            if axis == COPIES:               # one copy of each kv head: ranks 0, step, 2 step, ...
                parts, axis = parts[::self.step], 0
            t = self.alive[key] = torch.cat(parts, dim=axis)
        return t

    def __iter__(self):
        return iter(self.layout)

    def __len__(self):
        return len(self.layout)

    def shape(self, name):
        """The merged shape, without merging."""
        key, axis = self.layout[name]
        s = list(self.shards[0][key].shape)
        if axis == COPIES:
            s[0] *= self.world // self.step
        elif axis is not None:
            s[axis] *= self.world
        return torch.Size(s)

    def __repr__(self):
        return f"ShardedWeights({len(self)} tensors merged on access from {self.world} shards)"


def shard_axis(name, shapes, want, args, where):
    """How the shards' slices of name (shapes: one per rank) make want: dim 0, dim 1, None (replicated), COPIES."""
    world, s = len(shapes), shapes[0]
    if any(t != s for t in shapes):
        detail = ", ".join(f"{shard_name(r)}: {tuple(t)}" for r, t in enumerate(shapes))
        raise CheckpointError(f"{where}: the shards of {name} have mixed shapes ({detail}); every rank holds an "
                              "equal slice: the files come from different splits or models, download them again")
    if tail(name) in KV and world > args.n_kv_heads and world % args.n_kv_heads == 0 \
            and s == (want[0] // args.n_kv_heads, *want[1:]):
        return COPIES
    if s == want and len(want) == 1:
        return None
    for a in range(len(want)):
        if s[a] * world == want[a] and s[:a] + s[a + 1:] == want[:a] + want[a + 1:]:
            return a
    if s == want:
        raise CheckpointError(f"{where}: {name} has its full shape {tuple(want)} in each of the {world} shards, "
                              "where a model-parallel file holds a slice of it: are these copies of one "
                              "single-file checkpoint? Keep consolidated.00.pth only")
    raise CheckpointError(f"{where}: {world} shards of {name} with shape {tuple(s)} each do not make its shape "
                          f"{tuple(want)} from params.json (dim={args.dim}, n_heads={args.n_heads}, "
                          f"n_kv_heads={args.n_kv_heads}, hidden_dim={args.hidden_dim}): along no dim is "
                          f"{world} x the slice the full size. Is params.json from the same model as the shards?")


def check_ranks(paths, where):
    ranks = sorted(int(p.name[13:15]) for p in paths)
    missing = [shard_name(r) for r in range(ranks[-1] + 1) if r not in ranks]
    if missing:
        raise CheckpointError(f"{where}: {', '.join(missing)} missing; a model-parallel checkpoint needs one "
                              f"file per rank, consolidated.00.pth to {shard_name(ranks[-1])}: download it again")


def check_same_keys(shards, paths):
    keys = set(shards[0])
    for sd, p in zip(shards[1:], paths[1:]):
        if set(sd) != keys:
            extra, lack = sorted(set(sd) - keys, key=str), sorted(keys - set(sd), key=str)
            raise CheckpointError(f"{p}: its keys differ from {paths[0].name}'s (extra {extra[:4]}, lacking "
                                  f"{lack[:4]}): all shards of a checkpoint hold the same tensors; download again")


def check_tensors(sd, path):
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    for k, t in sd.items():
        if not isinstance(t, torch.Tensor) or t.is_meta:
            what = "a meta tensor" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
            raise CheckpointError(f"{path}: {k} is {what}, not a tensor with data; save a state dict of real tensors")


def load_shards(paths, args):
    """ShardedWeights from Meta's consolidated.NN.pth files (all of them, sorted), checked against params.json."""
    paths = sorted(paths)
    where = f"{paths[0].parent} ({len(paths)} shards)"
    check_ranks(paths, where)
    shards = [load_state_dict(p) for p in paths]            # mmap: no bytes read yet
    for sd, p in zip(shards, paths):
        check_tensors(sd, p)
    check_same_keys(shards, paths)
    keys = list(shards[0])
    if "output.weight" not in keys and "tok_embeddings.weight" in keys:
        keys.append("output.weight")                        # tied embeddings: output reads the embedding
    want, layout, stand_in = expected_shapes(args), {}, {}
    for name in keys:
        key = "tok_embeddings.weight" if name not in shards[0] else name
        parts = [sd[key] for sd in shards]
        dtypes = {t.dtype for t in parts}
        if len(dtypes) > 1:
            raise CheckpointError(f"{where}: the shards of {name} have mixed dtypes {sorted(map(str, dtypes))}")
        axis = shard_axis(name, [tuple(t.shape) for t in parts], want[name], args, where) if name in want else None
        layout[name] = (key, axis)
        shape = want[name] if name in want else parts[0].shape
        stand_in[name] = torch.empty((), dtype=parts[0].dtype).expand(shape)  # shape and dtype, no bytes
    check_weights(stand_in, args, where)                    # key set and dtypes, as for one file
    weights = ShardedWeights(shards, layout, args.n_kv_heads)
    check_replicas(weights, paths)
    return weights


def check_replicas(weights, paths):
    """Replicated tensors (norms, kv-head copies) must be equal in every shard that holds them."""
    for name, (key, axis) in weights.layout.items():
        if axis not in (None, COPIES) or key != name:
            continue
        parts = [sd[key] for sd in weights.shards]
        for r, t in enumerate(parts):
            first = r - r % weights.step if axis == COPIES else 0
            if torch.equal(t, parts[first]):
                continue
            if axis is None:
                raise CheckpointError(f"{paths[r]}: {name} is replicated (whole in every shard) but differs from "
                                      f"{paths[first].name}'s: the shards come from different models")
            raise CheckpointError(f"{paths[r]}: {name} should be a copy of kv head {r // weights.step}, the one this "
                                  f"rank's query heads use, as in {paths[first].name}, but differs: the shards come "
                                  "from different models, or from a split that deals kv heads round-robin "
                                  "(llama_models' reshard_mp does when n_kv_heads > 1), pairing queries with the "
                                  "wrong kv head")
