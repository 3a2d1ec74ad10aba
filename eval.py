"""eval.py: evaluate trained nitp checkpoints on held-out data: geometry, a frozen probe, multiple choice.

The paper's central claim is geometric: under NTP the last hidden states collapse into a low-rank,
anisotropic cone, NITP keeps them higher-rank and more isotropic (docs/method.md, 'Geometry metrics').
For every run directory that train.py wrote (checkpoints/ + log.jsonl), this file
  * collects every layer's representations on the same held-out tokens (val.bin) and measures their
    geometry with metrics.py (effective rank, singular values, average pairwise cosine);
  * scores the frozen representations with a linear probe (the paper's MTEB protocol at small scale)
    and the language model with a multiple-choice scorer (lm-evaluation-harness style), on the probe and
    multiple-choice tasks that tasks.py builds (held-out Shakespeare, or the user's jsonl files);
  * returns one result dict per run (evaluate_run): metrics.py's keys, PROBE_ACCURACY and MC_ACCURACY
    at the top level (compare.py aggregates them over seeds); make_report hands them to report.py, which
    writes them as NAME/metrics.json, draws the five figures and writes report.md:
        python eval.py RUN_DIR [RUN_DIR ...] --out=REPORT_DIR [--max_tokens=8192 --num_mc=200 ...]
    REPORT_DIR is new, or holds an earlier report of eval.py's (replaced), or none of its files' names: a
    report.md or a figure of the user's there is refused before any work (report.check_out_dir), and so are two runs
    that would be reported under one name (run_names).
Checkpoints store data_dir relative to the repository (files.from_repo reads it back). The held-out data must have
the vocabulary a run was trained on (data.check_vocab: a run on a compacted vocabulary, data.py --compact_vocab,
reads only data with the same map, and the tasks' text is encoded through that map), and a run's own data folder
must still hold the tokens it trained on (data.prepared_again, as --resume): prepared again, its val split
may hold training documents. Runs are read as --resume reads them (checkpoint.load_model). Everything is a
function; `main(argv)` is the CLI. Imports model, data, runtime, metrics, tasks and report (matplotlib
only through report.py), never train.py. Nothing runs at import.
"""

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
from support import checkpoint, cli, files, metrics, report, runtime, tasks

PROBE_ACCURACY = "probe_accuracy"  # result keys compare.py reads, beside metrics.py's
MC_ACCURACY = "mc_accuracy"


# ---------------------------------------------------------------------------- config
@dataclass
class EvalConfig:
    max_tokens: int = 8192        # held-out tokens whose representations are collected (memory bound)
    seq_len: int | None = None    # window length; None -> smallest block_size among the runs compared
    batch_tokens: int = 2048      # tokens per forward pass (bounds the (B, T, vocab) logits: 2048 x 50k x 4 B = 0.4 GB)
    num_pairs: int = 20000        # random token pairs for the average cosine
    data_dir: str | None = None   # held-out tokens: DATA_DIR/val.bin; None -> the first run's ckpt data_dir
    probe: bool = True            # frozen-representation genre probe
    probe_file: str | None = None  # jsonl {"text", "label"[, "split"]} instead of the built-in genre task
    probe_window: int = 128       # tokens per passage (built-in task; user texts are truncated to it)
    probe_per_play: int = 24      # passages per play, evenly spaced over the play
    probe_test_fraction: float = 0.25  # user probe files without a "split" field
    probe_l2: float = 1e-3        # L2 penalty on the probe weights
    mc: bool = True               # multiple-choice scorer
    mc_file: str | None = None    # jsonl {"context", "choices", "answer"} instead of the built-in task
    num_mc: int = 200             # questions in the built-in next-line task
    mc_context_lines: int = 4     # preceding lines given as context
    mc_normalization: str = "char"  # "char" (per UTF-8 byte, lm-eval's acc_norm) | "token" | "none"
    device: str = "auto"          # "auto" -> cuda when available, else cpu
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_tokens", "num_pairs", "probe_window", "probe_per_play", "num_mc", "mc_context_lines"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name}={getattr(self, name)} must be positive")
        for ok, message in [
            (self.max_tokens > 0, f"--max_tokens={self.max_tokens} must be positive (at least 2)"),
            # one token gives one row of representations: no pair of them for the average cosine
            (self.max_tokens >= 2, f"--max_tokens={self.max_tokens}: at least 2 held-out tokens are needed (the "
                                   "average cosine compares pairs of them); pass --max_tokens=2 or more"),
            (self.seq_len is None or self.seq_len >= 2, f"seq_len={self.seq_len} must be >= 2 (or none)"),
            (0 < self.probe_test_fraction < 1, f"probe_test_fraction={self.probe_test_fraction} must be in (0, 1)"),
            (self.probe_l2 >= 0, f"probe_l2={self.probe_l2} must be >= 0"),
            (self.mc_normalization in ("char", "token", "none"),
             f"mc_normalization={self.mc_normalization!r}; use char, token or none"),
        ]:
            if not ok:
                raise ValueError(message)


def _resolve_device(cfg: EvalConfig) -> EvalConfig:
    """cfg with its device resolved by runtime.resolve_device ("auto" -> "cuda:0" or "cpu"; a bad one is an error)."""
    return dataclasses.replace(cfg, device=str(runtime.resolve_device(cfg.device)))


def heldout_data_dir(cfg: EvalConfig, ckpt: dict) -> str:
    """Where the held-out tokens are: cfg.data_dir, else the checkpoint's data_dir (stored relative to the
    repository; older checkpoints hold an absolute path), else data.py's default."""
    if cfg.data_dir:
        return cfg.data_dir
    return files.from_repo(ckpt["data_dir"]) if ckpt.get("data_dir") else data.DEFAULT_DATA_DIR


# ---------------------------------------------------------------------------- runs
def read_log(path) -> list[dict]:
    """Records of a log.jsonl; a torn last line (run still writing) is skipped, any other bad line is an error."""
    lines = Path(path).read_text().splitlines()
    records = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if line_no == len(lines):
                break
            raise ValueError(f"{path}, line {line_no}: not valid JSON ({err}); fix or remove the line") from err
    return records


def load_run(run_dir) -> dict:
    """A run directory written by train.py: model (weights only, no projector), checkpoint metadata, log records."""
    run_dir = Path(run_dir)
    log_path = run_dir / "log.jsonl"
    make_one = f"train one with `python train.py --objective=ntp --out_dir={run_dir}`"
    if checkpoint.latest(run_dir) is None:  # ValueError for a damaged newer one: never an older one silently
        raise FileNotFoundError(f"no complete checkpoint in {run_dir / checkpoint.CHECKPOINTS}: {run_dir} is not a "
                                f"finished run; {make_one}")
    if not log_path.is_file():
        raise FileNotFoundError(f"no log at {log_path}; eval.py needs the run's log.jsonl beside its checkpoints "
                                f"({make_one})")
    model, ckpt = checkpoint.load_model(run_dir, map_location="cpu")  # the newest, also of a run still saving
    model.eval()
    log = read_log(log_path)
    config_line = next((r for r in log if r.get("kind") == "config"), {})
    train_config = config_line.get("train_config") or ckpt.get("train_config") or {}
    objective = train_config.get("objective", "unknown")
    return {"dir": str(run_dir), "name": run_dir.resolve().name, "label": f"{run_dir.resolve().name} ({objective})",
            "objective": objective, "train_config": train_config, "model": model, "ckpt": ckpt, "log": log}


def run_names(run_dirs) -> list[str]:
    """The name each run is reported under (its NAME/metrics.json, its report row): its folder's name, or, where two
    runs' folders share one (seeds/ntp), the parent's name too ("seed1-ntp"). ValueError, naming both paths, for two
    runs that would still share a name: one's metrics.json would replace the other's."""
    folders = [Path(d).resolve() for d in run_dirs]
    names = [f.name for f in folders]
    names = [f"{f.parent.name}-{f.name}" if names.count(f.name) > 1 else f.name for f in folders]
    for i, name in enumerate(names):
        j = names.index(name)
        if j < i:
            twice = folders[i] == folders[j]
            why, fix = (("the same run, given twice", "give each run once") if twice else
                        ("their folders and their parents have the same names", "link one of them under another name"))
            raise ValueError(f"{run_dirs[j]} and {run_dirs[i]} would both be reported as "
                             f"{folders[i].name if twice else name!r} ({why}), one's metrics.json and report row "
                             f"replacing the other's; {fix}")
    return names


def check_same_tokenizer(runs: list[dict]) -> str:
    tokenizers = {run["dir"]: run["ckpt"].get("tokenizer", "gpt2") for run in runs}
    if len(set(tokenizers.values())) > 1:
        raise ValueError(f"checkpoints from different tokenizers cannot be compared on the same tokens: {tokenizers}; "
                         "evaluate them in separate `python eval.py` calls")
    return next(iter(tokenizers.values()))


# ---------------------------------------------------------------------------- collection
def layer_names(n_layer: int) -> list[str]:
    return ["embedding"] + [f"block {k}" for k in range(1, n_layer + 1)] + ["final norm"]


@torch.no_grad()
def collect_representations(model, tokens, max_tokens=8192, seq_len=None, batch_size=8, device="cpu"):
    """Every layer's representations of the first `max_tokens` held-out tokens, plus the val loss on them.

    `tokens` is a 1-D token stream (e.g. val.bin). It is cut into non-overlapping windows of `seq_len`
    (default: the model's block_size) input tokens, each with its next-token targets; no padding is
    needed, so every collected position is a real token. Returns ({layer name: (N, d) float32 CPU},
    mean next-token cross-entropy). Layer names: "embedding", "block 1".."block L", "final norm".
    """
    n_layer, block_size = model.config.n_layer, model.config.block_size
    seq_len = min(seq_len or block_size, block_size)
    tokens = torch.as_tensor(np.asarray(tokens[: max_tokens + 1], dtype=np.int64))
    if tokens.numel() < 2:
        raise ValueError(f"need at least 2 held-out tokens, got {tokens.numel()}")
    model = model.to(device).eval()
    n_targets = tokens.numel() - 1
    full_windows = list(range(0, n_targets - seq_len + 1, seq_len))
    batches = [full_windows[b:b + batch_size] for b in range(0, len(full_windows), batch_size)]
    if n_targets % seq_len:  # the last, shorter window goes alone (windows in a batch share a length)
        batches.append([n_targets - n_targets % seq_len])
    names = layer_names(n_layer)
    collected = {name: [] for name in names}
    loss_sum = 0.0
    for batch in batches:
        length = min(seq_len, n_targets - batch[0])
        x = torch.stack([tokens[s:s + length] for s in batch]).to(device)  # (B, T)
        y = torch.stack([tokens[s + 1:s + length + 1] for s in batch]).to(device)  # (B, T)
        out = model(x, layers=tuple(range(n_layer + 1)), compute_logits=True)
        loss_sum += F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        for k in range(n_layer + 1):
            collected[names[k]].append(out.layers[k].float().flatten(0, 1).cpu())  # (B*T, d)
        collected["final norm"].append(out.final_hidden.float().flatten(0, 1).cpu())
    return {name: torch.cat(parts) for name, parts in collected.items()}, loss_sum / n_targets


@torch.no_grad()
def embed_sequences(model, token_lists, batch_size=8, device="cpu") -> torch.Tensor:
    """Mean-pooled (over the real tokens only), L2-normalised final hidden states, (num_sequences, d).

    Sequences are right-padded; causal attention means padding never changes the real positions.
    """
    model = model.to(device).eval()
    block_size = model.config.block_size
    pooled = []
    for b in range(0, len(token_lists), batch_size):
        seqs = [list(t)[:block_size] for t in token_lists[b:b + batch_size]]
        x, valid = _pad(seqs, device)
        hidden = model(x, compute_logits=False).final_hidden.float()  # (B, T, d)
        mean = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)  # (B, d)
        pooled.append(F.normalize(mean, dim=-1).cpu())
    return torch.cat(pooled)


def _pad(seqs, device):
    if any(len(s) == 0 for s in seqs):
        raise ValueError("cannot embed or score an empty token sequence; drop empty texts from the task")
    longest = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), longest, dtype=torch.long)  # pad id is irrelevant: masked out
    valid = torch.zeros(len(seqs), longest)
    for i, s in enumerate(seqs):
        x[i, :len(s)], valid[i, :len(s)] = torch.tensor(s), 1.0
    return x.to(device), valid.to(device)


def geometry(reps: dict, num_pairs=20000, seed=0) -> dict:
    """Effective rank, average cosine and singular values of every layer; the final states' at the top level."""
    layers = [{"name": name, metrics.EFFECTIVE_RANK: metrics.effective_rank(X),
               # the same pairs of positions in every layer (one seed each), so layers compare directly
               metrics.AVG_COSINE: metrics.avg_pairwise_cosine(X, num_pairs, torch.Generator().manual_seed(seed)),
               "singular_values": metrics.singular_values(X).tolist()} for name, X in reps.items()]
    return {"layers": layers, metrics.AVG_COSINE: layers[-1][metrics.AVG_COSINE]}


# ---------------------------------------------------------------------------- frozen-representation probe
def train_linear_probe(train_x, train_y, test_x, test_y, num_classes, l2=1e-3, max_iter=200) -> dict:
    """Multinomial logistic regression (with bias, L2 on weights) by full-batch LBFGS; accuracy on test.

    l2 = 1e-3 on the mean cross-entropy is about scikit-learn's default (C = 1, i.e. 1 / (2 n)) at n ~ 500,
    the classifier MTEB uses. The majority baseline is the test accuracy of the best constant prediction
    (most frequent TEST class), the strongest classifier that ignores the representation; stderr is
    binomial, sqrt(p (1 - p) / n_test) (passages of one play are correlated, so it is optimistic).
    """
    train_x, test_x = train_x.double(), test_x.double()
    torch.manual_seed(0)
    linear = torch.nn.Linear(train_x.shape[1], num_classes).double()
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        accuracy = (linear(test_x).argmax(1) == test_y).double().mean().item()
    majority = torch.bincount(test_y, minlength=num_classes).max().item() / len(test_y)
    return {"accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / len(test_y)),
            "majority_baseline": majority, "n_train": len(train_y), "n_test": len(test_y)}


def run_probe(model, task: list[dict], batch_size=8, device="cpu", l2=1e-3) -> dict:
    classes = sorted({ex["label"] for ex in task})
    splits = {s: [ex for ex in task if ex["split"] == s] for s in ("train", "test")}
    if not splits["train"] or not splits["test"] or len(classes) < 2:
        raise ValueError(f"probe task needs train and test examples and >= 2 labels; got {len(splits['train'])} train, "
                         f"{len(splits['test'])} test, labels {classes}")
    x = {s: embed_sequences(model, [ex["tokens"] for ex in exs], batch_size, device) for s, exs in splits.items()}
    y = {s: torch.tensor([classes.index(ex["label"]) for ex in exs]) for s, exs in splits.items()}
    passage_tokens = min(max(len(ex["tokens"]) for ex in task), model.config.block_size)  # embed_sequences truncates
    return {**train_linear_probe(x["train"], y["train"], x["test"], y["test"], len(classes), l2), "classes": classes,
            "passage_tokens": passage_tokens}


# ---------------------------------------------------------------------------- multiple choice
def model_loglikelihood(model, tokenizer, batch_size=8, device="cpu"):
    """fn(pairs [(context, continuation)]) -> [(sum log p(continuation | context), num continuation tokens)].

    Context and continuation are tokenized separately; an empty context starts from <|endoftext|>; the
    context is truncated from the left to fit the model's block_size.
    """
    model = model.to(device).eval()
    block_size = model.config.block_size
    lm_head = getattr(model, "lm_head", None)  # model.py's unembedding; without one, fall back to full logits

    @torch.no_grad()
    def loglikelihood(pairs):
        results = []
        for b in range(0, len(pairs), batch_size):
            seqs, spans = [], []
            for context, continuation in pairs[b:b + batch_size]:
                cont = tokenizer.encode_ordinary(continuation)[: block_size - 1]
                ctx = tokenizer.encode_ordinary(context) or [getattr(tokenizer, "eot_token", data.EOT)]
                ctx = ctx[-(block_size - len(cont)):]
                seqs.append(ctx + cont)
                spans.append((len(ctx), len(cont)))
            x, _ = _pad(seqs, device)
            out = model(x, compute_logits=lm_head is None)
            # position p predicts token p + 1; only the continuations' rows are unembedded, in one matmul (the
            # (B, T, V) logits of every position cost ~5x more time and memory on these short choices)
            rows = torch.tensor([(i, p) for i, (start, n) in enumerate(spans) for p in range(start - 1, start - 1 + n)],
                                device=device)  # (R, 2)
            targets = x[rows[:, 0], rows[:, 1] + 1]  # (R,)
            if lm_head is not None:
                logits = lm_head(out.final_hidden[rows[:, 0], rows[:, 1]])  # (R, V)
            else:
                logits = out.logits[rows[:, 0], rows[:, 1]]
            picked = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]  # (R,)
            for chunk in picked.split([n for _, n in spans]):
                results.append((chunk.sum().item(), len(chunk)))
        return results

    return loglikelihood


def score_multiple_choice(questions, loglikelihood, normalization="char") -> dict:
    """Accuracy of argmax over choices of the (length-normalised) log-likelihood of choice given context.

    normalization: "char" = divide by the choice's UTF-8 byte length (lm-eval's acc_norm), "token" = by
    its token count, "none" = raw sum (lm-eval's acc). Standard error sqrt(p (1 - p) / n) (binomial).
    """
    if normalization not in ("char", "token", "none"):
        raise ValueError(f"unknown normalization {normalization!r}; use 'char', 'token' or 'none'")
    # one call for all choices of all questions, so the scorer can batch freely
    flat = loglikelihood([(q["context"], choice) for q in questions for choice in q["choices"]])
    correct = []
    for q in questions:
        scored, flat = flat[:len(q["choices"])], flat[len(q["choices"]):]
        lengths = {"char": [len(c.encode("utf-8")) for c in q["choices"]], "token": [n for _, n in scored],
                   "none": [1] * len(scored)}[normalization]
        scores = [logp / max(length, 1) for (logp, _), length in zip(scored, lengths)]
        correct.append(float(int(np.argmax(scores)) == q["answer"]))
    n = len(correct)
    accuracy = sum(correct) / n
    return {"accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / n), "n": n,
            "chance": float(np.mean([1 / len(q["choices"]) for q in questions])), "normalization": normalization}


# ---------------------------------------------------------------------------- per-run evaluation
HISTORY_KEYS = ("step", metrics.VAL_LOSS, metrics.EFFECTIVE_RANK, metrics.AVG_COSINE,
                metrics.TARGET_EFFECTIVE_RANK, metrics.TARGET_AVG_COSINE)  # of log.jsonl's eval lines


def load_heldout(data_dir, runs: list[dict]):
    """(meta.json, val split) of the held-out data, refused unless every run (a `load_run` dict) can read it: the
    vocabulary it was trained on, every id within its vocab_size (data.check_vocab)."""
    meta = data.load_meta(data_dir)
    for run in runs:  # the run's own data folder prepared again: its val split may hold what the run trained on
        if problem := data.prepared_again(run["ckpt"], data_dir, meta):
            raise ValueError(f"{run['dir']}: {problem}; prepare it again as it was (from the same text), or pass "
                             "--data_dir= a folder of held-out data with the run's vocabulary")
        data.check_vocab(meta, run["model"].config.vocab_size, run["ckpt"])
    return meta, data.load_split(data_dir, "val")


def evaluate_run(run_dir, cfg: EvalConfig | None = None, tokens=None, probe_task=None, mc_task=None,
                 meta=None) -> dict:
    """All metrics of one run as a flat-ish dict (scalars at the top level, so seeds aggregate easily).

    `run_dir` may also be a dict from `load_run`. `tokens` defaults to val.bin of cfg.data_dir or of the
    checkpoint's data_dir, `meta` to that directory's meta.json (give it with `tokens`: the multiple-choice text is
    encoded into its ids); when neither task is given both come from `tasks.build_tasks` (pass them to share them).
    """
    cfg = _resolve_device(cfg or EvalConfig())
    run = run_dir if isinstance(run_dir, dict) else load_run(run_dir)
    model, ckpt = run["model"], run["ckpt"]
    if tokens is None or meta is None:
        meta, heldout = load_heldout(heldout_data_dir(cfg, ckpt), [run])
        tokens = heldout if tokens is None else tokens
    else:
        data.check_vocab(meta, model.config.vocab_size, ckpt)
    if probe_task is None and mc_task is None:
        probe_task, mc_task = tasks.build_tasks(cfg, ckpt.get("tokenizer", "gpt2"), meta)
    seq_len = min(cfg.seq_len or model.config.block_size, model.config.block_size)
    reps, val_loss = collect_representations(model, tokens, cfg.max_tokens, seq_len,
                                             max(1, cfg.batch_tokens // seq_len), cfg.device)
    geo = geometry(reps, cfg.num_pairs, cfg.seed)
    n_tokens, d_model = reps["final norm"].shape
    del reps
    evals = [r for r in run["log"] if r.get("kind") == "eval"]
    aux_key = metrics.aux_loss_key(run["objective"]) if run["objective"] not in ("ntp", "unknown") else None
    # the layer NITP targets (its preset default for runs of other objectives, so that every run reports the same one)
    target, _ = model.config.nitp_defaults(run.get("train_config", {}).get("target_layer"))
    val_aux_key = metrics.aux_loss_key(run["objective"], "val") if aux_key else None
    result = {
        "run_dir": files.repo_relative(run["dir"]), "name": run["name"], "label": run["label"],
        "objective": run["objective"], "group": run.get("group", run["name"]),
        "aux_loss_type": run.get("train_config", {}).get("loss_type") if run["objective"] == "nitp" else None,
        "step": ckpt.get("step"), "tokenizer": ckpt.get("tokenizer", "gpt2"), "n_layer": model.config.n_layer,
        "d_model": d_model, "eval_tokens": n_tokens, metrics.VAL_LOSS: val_loss,
        "val_loss_log": next((r[metrics.VAL_LOSS] for r in reversed(evals) if metrics.VAL_LOSS in r), None),
        metrics.EFFECTIVE_RANK: geo["layers"][-1][metrics.EFFECTIVE_RANK],
        "effective_rank_max": min(n_tokens - 1, d_model), metrics.AVG_COSINE: geo[metrics.AVG_COSINE],
        "target_layer": target, metrics.TARGET_EFFECTIVE_RANK: geo["layers"][target][metrics.EFFECTIVE_RANK],
        metrics.TARGET_AVG_COSINE: geo["layers"][target][metrics.AVG_COSINE],
        metrics.FINAL_AUX_LOSS: next((r[val_aux_key] for r in reversed(evals) if r.get(val_aux_key) is not None), None),
        "layers": geo["layers"],
        "history": {"eval": [{k: r.get(k) for k in HISTORY_KEYS} for r in evals],
                    "train_aux": [[r["step"], r[aux_key]] for r in run["log"]  # the run's own aux loss
                                  if aux_key and r.get("kind") == "train" and r.get(aux_key) is not None]},
    }
    if probe_task is not None:
        passage_len = max(len(ex["tokens"]) for ex in probe_task)
        result["probe"] = run_probe(model, probe_task, max(1, cfg.batch_tokens // passage_len), cfg.device,
                                    cfg.probe_l2)
        result[PROBE_ACCURACY], result["probe_stderr"], result["probe_majority"] = (
            result["probe"][k] for k in ("accuracy", "stderr", "majority_baseline"))
    if mc_task is not None:
        tokenizer = data.text_tokenizer(meta)  # through the map of a compacted vocabulary
        if tokenizer is None:
            raise ValueError(f"a multiple-choice task needs text turned into {meta.get('tokenizer')!r} ids, which only "
                             f"GPT-2 data (compacted or not) allows here; pass --mc=false")
        scorer = model_loglikelihood(model, tokenizer, max(1, cfg.batch_tokens // 128), cfg.device)  # ~128-token items
        result["mc"] = score_multiple_choice(mc_task, scorer, cfg.mc_normalization)
        result[MC_ACCURACY], result["mc_stderr"], result["mc_chance"] = (
            result["mc"][k] for k in ("accuracy", "stderr", "chance"))
    return result


def make_report(run_dirs, out_dir, cfg: EvalConfig | None = None) -> list[dict]:
    """Evaluate every run on the same held-out tokens and tasks; write figures, report.md, NAME/metrics.json."""
    cfg = _resolve_device(cfg or EvalConfig())
    if not run_dirs:
        raise ValueError("give at least one run directory, e.g. `python eval.py out/ntp out/nitp --out=reports/cmp`")
    names = run_names(run_dirs)
    report.check_out_dir(out_dir, names)  # before the work: a bad --out fails in a second
    runs = [load_run(d) for d in run_dirs]
    tokenizer_name = check_same_tokenizer(runs)
    for r, name in zip(runs, names):
        r["group"] = r["name"]  # runs of one group (seeds of one variant: one folder name) share a colour
        r["name"], r["label"] = name, f"{name} ({r['objective']})"
    # every run sees the same tokens in the same windows, so their numbers are comparable
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or min(r["model"].config.block_size for r in runs))
    data_dir = heldout_data_dir(cfg, runs[0]["ckpt"])
    meta, tokens = load_heldout(data_dir, runs)
    probe_task, mc_task = tasks.build_tasks(cfg, tokenizer_name, meta)
    results = [evaluate_run(run, cfg, tokens, probe_task, mc_task, meta) for run in runs]
    trained_on = [files.from_repo(r["ckpt"]["data_dir"]) if r["ckpt"].get("data_dir") else None for r in runs]
    note = report.heldout_note(data.split_files(data_dir, "val")[0], results[0]["eval_tokens"], cfg.seq_len,
                               tokenizer_name, trained_on)
    report.write_all(results, out_dir, cfg, note)
    return results


def _flag_type(field: dataclasses.Field):
    """argparse `type` of an EvalConfig field: runtime.coerce_value (strict booleans, none only where optional)."""
    def convert(text: str):
        try:
            return runtime.coerce_value(field.name, text, field.type, from_cli=True)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Options are EvalConfig fields: --max_tokens=4096 --probe=false ...")
    parser.add_argument("run_dirs", nargs="+", help="run directories written by train.py (checkpoints/ + log.jsonl)")
    parser.add_argument("--out", required=True, help="report directory (figures, report.md, NAME/metrics.json)")
    for f in dataclasses.fields(EvalConfig):
        parser.add_argument(f"--{f.name}", type=_flag_type(f), default=f.default, help=f"default {f.default}")
    return parser


def main(argv=None) -> int:
    """The command line: 0 when the report is written; 2 with one line naming the problem (a missing or corrupted
    run, a bad option or task file, an --out that is a file, unwritable or holds files eval.py did not write)."""
    args = vars(_parser().parse_args(argv))
    run_dirs, out_dir = args.pop("run_dirs"), args.pop("out")
    if not out_dir.strip():  # "" would be the current folder
        print("eval.py: error: --out is empty; give the report's folder, e.g. --out=reports/x", file=sys.stderr)
        return 2
    try:
        results = make_report(run_dirs, out_dir, EvalConfig(**args))
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r['label']}: val loss {r[metrics.VAL_LOSS]:.4f}, eff. rank {r[metrics.EFFECTIVE_RANK]:.1f}, "
              f"avg cos {r[metrics.AVG_COSINE]:.3f}" + (f", probe {r[PROBE_ACCURACY]:.3f}" if "probe" in r else "")
              + (f", MC {r[MC_ACCURACY]:.3f} ± {r['mc_stderr']:.3f}" if "mc" in r else ""))
    print(f"wrote {Path(out_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
