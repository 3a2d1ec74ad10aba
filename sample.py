"""sample.py: text from a trained run: the newest checkpoint of a run folder, continued from a prompt (nanoGPT's).

    python sample.py RUN                                  # 3 samples of 200 new tokens after "\\n"
    python sample.py RUN --start="ROMEO:" --num_samples=5 --max_new_tokens=100 --temperature=0.9 --top_k=50
    python sample.py RUN --start=FILE:prompt.txt          # the prompt read from a file (UTF-8)

RUN is a folder train.py wrote (--out_dir): checkpoint.load_model reads its newest complete checkpoint (dense or
MoE), refusing a corrupted or crafted one, or a damaged newer one (as --resume does), and retrying with the newest
when a run still training deletes the one being read. The ids are turned into text by the tokenizer the run's data was
prepared with, found as eval.py finds it: the checkpoint's meta.json names the data folder (repository-relative),
whose meta.json holds the tokenizer and, for a compacted vocabulary (data.py --compact_vocab), the map of its
ids; compact.meta_tokenizer reads text through it. A GPT-2 run whose data folder is gone still samples (GPT-2's
tokenizer needs no table); any other needs its data folder's meta.json.

Generation is nanoGPT's loop, one sample after another with one torch.Generator seeded by --seed (so sample k is
the same for any --num_samples >= k, and a seed gives the same text on CPU): the context cropped to the last
block_size tokens, the last position's logits / temperature, the top_k largest kept, softmax, torch.multinomial.
Ids beyond the tokenizer's real vocabulary (the head is padded, e.g. 50,304 rows for GPT-2's 50,257 ids) are never
drawn. As in nanoGPT every sample runs max_new_tokens (an end-of-text token does not stop it) and is printed with
its prompt, then a line of dashes. The prompt is encoded "ordinarily" (a literal <|endoftext|> is text); an empty
--start= starts from the end-of-text token, as eval.py does for an empty context.

Bad input (a missing run, no checkpoint, a corrupted one, a bad flag or value, a prompt the vocabulary cannot
encode, a missing or empty prompt file) is one line on stderr and exit code 2. Flags are runtime.parse_flags'
`--key=value` (or `--key value`). Imports torch, data.py and support/. Nothing runs at import.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import data
from support import checkpoint, compact, files, runtime, tokenizer

SEPARATOR = "---------------"  # printed after every sample, as nanoGPT does
FILE_PREFIX = "FILE:"            # --start=FILE:path reads the prompt from a file


@dataclass
class SampleConfig:
    start: str = "\n"               # the prompt, or FILE:path; empty: start from the end-of-text token
    num_samples: int = 3            # samples printed, one after another
    max_new_tokens: int = 200       # tokens generated per sample
    temperature: float = 0.8        # > 0; < 1 sharper, > 1 more random
    top_k: int | None = 200         # only the k likeliest tokens are drawn; none: the whole distribution
    seed: int = 1337                # the generator's seed: the same seed, the same samples (on CPU)
    device: str = "auto"            # auto | cpu | cuda | cuda:N


USAGE = "usage: python sample.py RUN [--key=value ...]"


# ---------------------------------------------------------------------------- input
def parse_args(argv) -> tuple[str, SampleConfig]:
    """(run folder, config) from the command line; ValueError naming a bad flag or value."""
    positional = []  # what is neither a flag nor a flag's value (`--top_k 5` is one flag)
    cfg = runtime.parse_flags(argv, SampleConfig, "sample.py", positional)
    if len(positional) != 1:
        raise ValueError(f"expected one run folder, got {len(positional)} ({' '.join(positional) or 'none'}); "
                         f"{USAGE}")
    for key, ok, need in (("temperature", cfg.temperature > 0, "> 0"), ("num_samples", cfg.num_samples >= 1, ">= 1"),
                          ("max_new_tokens", cfg.max_new_tokens >= 1, ">= 1"),
                          ("top_k", cfg.top_k is None or cfg.top_k >= 1, ">= 1 (or none)"),
                          ("seed", 0 <= cfg.seed < 2**64, f"in [0, {2**64 - 1}] (torch.Generator's seeds)")):
        if not ok:
            raise ValueError(f"--{key}={getattr(cfg, key)} must be {need}")
    return positional[0], cfg


def read_prompt(start: str) -> str:
    """The prompt text: `start` itself, or the contents of the file FILE:path names (refused when empty)."""
    if not start.startswith(FILE_PREFIX):
        return start
    path = Path(start[len(FILE_PREFIX):])
    if not path.is_file():
        raise FileNotFoundError(f"--start={start}: no prompt file {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--start={start}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text:
        raise ValueError(f"--start={start}: the prompt file {path} is empty; write the prompt into it")
    return text


def load_run(run_dir, device):
    """(model in eval mode on `device`, checkpoint meta.json) of the newest checkpoint of a run folder."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"no run folder {run_dir}; give the --out_dir of a train.py run")
    if checkpoint.latest(run_dir) is None:  # ValueError for a damaged newer one: never an older one silently
        raise FileNotFoundError(f"no complete checkpoint in {Path(run_dir) / checkpoint.CHECKPOINTS}: {run_dir} is not "
                                "a train.py run folder (or its run has not saved yet); pass the --out_dir of a run")
    model, meta = checkpoint.load_model(run_dir, map_location=device)  # the newest, also of a run still saving
    return model.eval(), meta


def run_tokenizer(ckpt: dict, model_vocab: int):
    """(tokenizer of the run's ids, how many ids it decodes): from the meta.json of the data folder the checkpoint
    names (its map, for a compacted vocabulary), checked against the vocabulary the run was trained on."""
    name, data_dir = ckpt.get("tokenizer", "gpt2"), ckpt.get("data_dir")
    try:
        meta = data.load_meta(files.from_repo(data_dir)) if data_dir else None
    except FileNotFoundError:
        meta = None
    if meta is None and name != "gpt2":
        raise FileNotFoundError(f"the run was trained on {name!r} tokens, whose table is in its data folder's "
                                f"meta.json, but {data_dir}/meta.json is missing; prepare that data again")
    # only the folder's vocabulary is read here: its tokens prepared again under the same one change no sample
    if meta is not None and (problem := data.prepared_again(ckpt, files.from_repo(data_dir), meta,
                                                                       tokens=False)):
        raise ValueError(problem)
    meta = meta or {"tokenizer": "gpt2", "vocab_size": tokenizer.GPT2_VOCAB_SIZE}
    if meta["vocab_size"] > model_vocab:
        raise ValueError(f"the data's tokenizer has {meta['vocab_size']:,} ids, the model only {model_vocab:,}")
    try:
        return compact.meta_tokenizer(meta), meta["vocab_size"]
    except (RuntimeError, ImportError) as err:  # GPT-2's files unavailable, `tokenizers` not installed
        raise ValueError(f"cannot load the run's tokenizer: {err}") from None


def encode_prompt(tok, text: str) -> list[int]:
    """The prompt's ids ([end-of-text] for an empty prompt); ValueError naming text a compacted vocabulary lacks."""
    try:
        ids = tok.encode_ordinary(text)
    except compact.UnknownTokenError as err:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(f"the prompt {shown!r} cannot be encoded for this run: {err}") from None
    return ids or [tok.eot_token]


# ---------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(model, idx, max_new_tokens: int, temperature=1.0, top_k=None, vocab_size=None, generator=None):
    """idx (B, T) continued by max_new_tokens sampled ids, (B, T + max_new_tokens): nanoGPT's loop. Only ids below
    vocab_size (the tokenizer's real ones; default all of the head's) are drawn."""
    block_size, n_logits = model.config.block_size, model.config.vocab_size
    vocab_size = min(vocab_size or n_logits, n_logits)
    for _ in range(max_new_tokens):
        context = idx[:, -block_size:]  # the model sees at most block_size tokens
        hidden = model(context, compute_logits=False).final_hidden[:, -1]  # (B, d): only the last position
        logits = model.lm_head(hidden).float() / temperature  # (B, V)
        logits[:, vocab_size:] = -float("inf")  # the padding rows: ids the tokenizer cannot decode
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, vocab_size)).values[:, [-1]]  # (B, 1)
            logits[logits < kth] = -float("inf")
        probs = F.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    return idx


def samples(run_dir, cfg: SampleConfig):
    """The cfg.num_samples texts (prompt included) of the newest checkpoint of `run_dir`, yielded one by one."""
    device = runtime.resolve_device(cfg.device)
    prompt = read_prompt(cfg.start)
    model, ckpt = load_run(run_dir, device)
    tok, vocab_size = run_tokenizer(ckpt, model.config.vocab_size)
    start = torch.tensor([encode_prompt(tok, prompt)], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    for _ in range(cfg.num_samples):
        ids = generate(model, start, cfg.max_new_tokens, cfg.temperature, cfg.top_k, vocab_size, generator)
        yield tok.decode(ids[0].tolist())


def main(argv=None) -> int:
    """The command line: 0 with the samples printed; 2 with one line on stderr naming bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if runtime.wants_help(argv):
        print("\n".join([__doc__.split("\n\n")[0], "", USAGE, *runtime.flag_help(SampleConfig)]))
        return 0
    try:
        run_dir, cfg = parse_args(argv)
        for text in samples(run_dir, cfg):
            print(text)
            print(SEPARATOR, flush=True)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError; refused checkpoints are ValueErrors
        print(f"sample.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
