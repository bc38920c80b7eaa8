"""What the command-line tools (pi-chat, pi-perplexity, pi-convert) share."""
from __future__ import annotations

import argparse
import sys


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, "PROG: error: MESSAGE (see PROG
    --help)", with no usage block; exit status 2 as argparse's."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "it"):
    """A transient tqdm bar; when not enabled, a disabled one whose update/close do nothing."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled)
