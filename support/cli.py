"""cli.py: the parser of the commands built on argparse (data.py, eval.py, tools/export.py, tools/vs_nanogpt.py),
held to the house rule for bad input: one line on stderr, `PROG: error: MESSAGE; see PROG --help`, exit status 2,
no traceback and no usage block (argparse's own parser prints its usage first; --help still prints it in full).
The commands whose flags are dataclass fields (train.py, sample.py, tools/bench.py, tools/compare.py) read them
with runtime.py's split_flags / parse_flags instead.

Standard library only, not in runtime.py (which imports torch): data.py imports it, and data.py's tokenizer
workers, spawned, import data.py again and must not pay for torch. Nothing runs at import.
"""

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors (an unknown flag, a missing argument, a value of the wrong type) are
    one line that names the problem and where the flags are listed."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")
