"""Conversion between lmforge's `Transformer` and transformers' `Olmo2ForCausalLM` folders
(`OlmoeForCausalLM` / `FlexOlmoForCausalLM` for a mixture of experts, `lmforge.model.hf_moe`):
`to_hf` (`lmforge export`), `from_hf`, and `import_hf` (`lmforge import`: a transformers folder
→ an lmforge checkpoint with its tokenizer, to continue pretraining a released model).

The two layouts differ only in names: our RoPE uses the same half-split rotation as
transformers, so no weight is permuted. The map below is the whole adapter. Neither
direction imports transformers: a folder is config.json + model.safetensors (+ tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
import torch
from safetensors.torch import load_file

from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write, file_sha256, staged_folder
from lmforge.model import hf_moe
from lmforge.model.config import ModelConfig
from lmforge.model.io import assign_weights, check_tokenizer_fits, model_folder_problem, save_model, write_safetensors
from lmforge.model.parametrization import fold_multipliers
from lmforge.model.transformer import Transformer

if TYPE_CHECKING:
    from lmforge.data.tokenizer import Tokenizer

SOURCE_FILE = "source.json"
"""Written by `import_hf` beside the weights: where they came from, with sha256 of its files."""

# ours → transformers; "{}" is the block index.
GLOBAL_KEYS = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "head.weight": "lm_head.weight",
}
BLOCK_KEYS = {
    "blocks.{}.attn.wq.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blocks.{}.attn.wk.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blocks.{}.attn.wv.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blocks.{}.attn.wo.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blocks.{}.attn.q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "blocks.{}.attn.k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
    "blocks.{}.attn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blocks.{}.mlp.w_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blocks.{}.mlp.w_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blocks.{}.mlp.w_down.weight": "model.layers.{}.mlp.down_proj.weight",
    "blocks.{}.mlp_norm.weight": "model.layers.{}.post_feedforward_layernorm.weight",
}


ATTENTION_KEYS = {k: v for k, v in BLOCK_KEYS.items() if ".attn." in k}


def key_map(cfg: ModelConfig) -> dict[str, str]:
    """Every parameter name of ours → its transformers name, for this config (an MoE's experts
    are split and stacked apart: `lmforge.model.hf_moe`)."""
    names = {ours: theirs for ours, theirs in GLOBAL_KEYS.items() if not (cfg.tie_embeddings and ours == "head.weight")}
    block = hf_moe.block_keys(cfg, ATTENTION_KEYS) if cfg.is_moe else BLOCK_KEYS
    for i in range(cfg.n_layers):
        names.update({ours.format(i): theirs.format(i) for ours, theirs in block.items()})
    return names


# -- config ---------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, *, eos_token_id: int | None, pad_token_id: int | None, dtype: torch.dtype) -> dict:
    """transformers' Olmo2Config as JSON. Written with both the 4.x (`rope_theta`) and 5.x
    (`rope_parameters`) spellings so either major version loads it."""
    return {
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def model_config_from_hf(config: Mapping[str, Any], source: str) -> ModelConfig:
    """Our config from an Olmo2Config (or OlmoeConfig / FlexOlmoConfig) dict; refuses features
    our model does not have."""
    model_type = config.get("model_type")
    if model_type != "olmo2" and model_type not in hf_moe.NORM_PLACEMENT:
        raise LmforgeError(f"{source}: model_type is {model_type!r}, expected 'olmo2' (OLMo 2), 'olmoe' (OLMoE) "
                           "or 'flex_olmo' (FlexOlmo)")  # fmt: skip
    moe = hf_moe.moe_fields(config, source) if model_type in hf_moe.NORM_PLACEMENT else {}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in config:
            raise LmforgeError(f"{source}: config.json has no '{key}'")
    if config.get("attention_bias"):
        raise LmforgeError(f"{source}: attention_bias=true is not OLMo 2; lmforge models have no biases")
    if config.get("hidden_act", "silu") != "silu":
        raise LmforgeError(f"{source}: hidden_act={config['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise LmforgeError(f"{source}: rope_type={rope_type!r}; only plain RoPE ('default') is supported")
    theta = rope.get("rope_theta", config.get("rope_theta", 10_000.0))
    d_model, n_heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != d_model // n_heads:
        raise LmforgeError(f"{source}: head_dim={head_dim} differs from hidden_size/num_attention_heads")
    vocab = config["vocab_size"]
    try:
        return ModelConfig(
            vocab_size=vocab,
            # A vocabulary that is not a multiple of 128 is taken as is: the shapes must match.
            vocab_multiple=128 if vocab % 128 == 0 else 1,
            d_model=d_model,
            n_layers=config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            mlp_hidden=config["intermediate_size"],
            max_seq_len=config.get("max_position_embeddings", 4096),
            rope_theta=float(theta),
            norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            init_std=config.get("initializer_range", 0.02),
            **moe,
        )
    except ConfigError as e:
        raise LmforgeError(f"{source}: config.json describes an invalid model: {e}") from None


# -- export ---------------------------------------------------------------------------------


def check_exportable(cfg: ModelConfig) -> None:
    """Refuse, naming the switch, a layout `Olmo2ForCausalLM` cannot represent. (µP is fine:
    its multipliers fold into the weights.)"""
    if cfg.norm_placement != "reordered" and not cfg.is_moe:  # an MoE pre-norm block is OLMoE's
        raise LmforgeError(
            f"model.norm_placement={cfg.norm_placement!r} cannot be exported to transformers' Olmo2ForCausalLM, "
            "whose norms sit on each sublayer's output; only norm_placement: reordered exports"
        )
    if not cfg.qk_norm:
        target = ("OlmoeForCausalLM" if cfg.norm_placement == "pre" else "FlexOlmoForCausalLM") if cfg.is_moe \
            else "Olmo2ForCausalLM"
        raise LmforgeError(
            f"model.qk_norm=false cannot be exported to transformers' {target}, which always applies "
            "QK-norm; only qk_norm: true exports"
        )



def to_hf(
    model: Transformer,
    out_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    dtype: torch.dtype | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a folder that `AutoModelForCausalLM.from_pretrained` loads as
    `Olmo2ForCausalLM`. The folder appears complete or not at all (built aside, then renamed).

    `tokenizer` adds its files and supplies eos/pad ids; `dtype` casts the weights (default:
    as they are).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise LmforgeError(f"{out_dir} already exists and is not empty; choose a new folder or pass overwrite")
    cfg = model.cfg
    check_exportable(cfg)
    # Under µP the logit multiplier and attention scale fold into the head and q_norm weights.
    state = fold_multipliers(cfg, model.state_dict())
    dtype = dtype or state["embed.weight"].dtype
    tensors = {theirs: state[ours] for ours, theirs in key_map(cfg).items()}
    if cfg.is_moe:
        tensors.update(hf_moe.expert_tensors(cfg, state))
    tensors = {name: t.detach().to("cpu", dtype).contiguous() for name, t in tensors.items()}
    if tokenizer is not None:
        eos_token_id, pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    with staged_folder(out_dir) as staging:
        write_safetensors(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        config = hf_config(cfg, eos_token_id=eos_token_id, pad_token_id=pad_token_id, dtype=dtype)
        if cfg.is_moe:
            config = hf_moe.moe_config(cfg, config)
        _write_json(staging / "config.json", config)
        generation = {"bos_token_id": None, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        _write_json(staging / "generation_config.json", generation)
        if tokenizer is not None:
            tokenizer.save_hf(staging, model_max_length=cfg.max_seq_len)
    return out_dir


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- import ---------------------------------------------------------------------------------


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers folder: one safetensors file, a sharded set, or a .bin."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        return load_file(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(folder / shard))
        return tensors
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise LmforgeError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _with_tokenizer_vocab(cfg: ModelConfig, tokenizer_file: Path) -> ModelConfig:
    """config.json only knows the padded vocabulary; a tokenizer beside it tells the real one."""
    if not tokenizer_file.exists():
        return cfg
    n_ids = tokenizers.Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    unpadded = cfg.replace(vocab_size=n_ids, vocab_multiple=128)
    return unpadded if unpadded.padded_vocab_size == cfg.padded_vocab_size else cfg


def from_hf(path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Transformer:
    """Load a transformers OLMo 2 folder (ours or `save_pretrained`'s) into a `Transformer`.

    Every expected weight must be present with the right shape, and nothing else may be:
    a mismatch names the key, so a wrong or truncated checkpoint never loads silently.
    """
    folder = Path(path)
    config_path = folder / "config.json"
    if not config_path.exists():
        if not folder.is_dir() or (folder / "model.yaml").exists():
            raise LmforgeError(model_folder_problem(folder))
        raise LmforgeError(f"{folder}: not a transformers model folder (config.json is missing)")
    cfg = model_config_from_hf(json.loads(config_path.read_text()), str(folder))
    cfg = _with_tokenizer_vocab(cfg, folder / "tokenizer.json")
    tensors = read_hf_weights(folder)

    names = key_map(cfg)
    if cfg.tie_embeddings:
        # A tied folder may still carry lm_head (some writers duplicate it): it must equal the embedding.
        head = tensors.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, tensors.get("model.embed_tokens.weight", head)):
            raise LmforgeError(f"{folder}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
    theirs_to_ours = {theirs: ours for ours, theirs in names.items()}
    experts = hf_moe.stack_experts(cfg, tensors, str(folder)) if cfg.is_moe else {}
    state = {theirs_to_ours.get(name, name): t for name, t in tensors.items()} | experts
    state = {name: t.to(device=device, dtype=dtype or t.dtype) for name, t in state.items()}
    return assign_weights(cfg, state, where=f"{folder} (OLMo 2 checkpoint)", display=lambda n: names.get(n, n))


def import_hf(path: str | Path, out_dir: str | Path, *, dtype: torch.dtype | None = None,
              overwrite: bool = False) -> Path:
    """`lmforge import`: write the transformers OLMo 2 folder `path` as an lmforge checkpoint
    (model.safetensors + model.yaml, its tokenizer, and source.json naming the folder and the
    sha256 of its files). Weights keep their dtype unless `dtype` is given, so exporting the
    result gives back the same tensors bit for bit. The folder appears complete or not at all."""
    from lmforge.data.tokenizer import Tokenizer

    folder, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise LmforgeError(f"{out_dir} exists; choose a new folder or pass --overwrite")
    model = from_hf(folder, dtype=dtype)
    tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.json").exists() else None
    if tokenizer is not None:
        check_tokenizer_fits(model.cfg, tokenizer, str(folder))
    hashed = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    source = {
        "format": "transformers",
        "path": str(folder.absolute()),
        "architectures": json.loads((folder / "config.json").read_text()).get("architectures"),
        "files": {p.name: file_sha256(p) for p in hashed},
    }
    with staged_folder(out_dir) as staging:
        save_model(model, staging, tokenizer)
        atomic_write(staging / SOURCE_FILE, json.dumps(source, indent=1) + "\n")
    return out_dir
