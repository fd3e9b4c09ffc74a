#!/usr/bin/env python3
"""English text for the real-model experiment (docs/results.md), offline.

Source: the reStructuredText sources of the Python 3.11 documentation, as Debian ships them
(`apt-get install python3.11-doc`: /usr/share/doc/python3.11/html/_sources, PSF license).
Markup is stripped to plain prose and code. Files are split by directory so that the held-out
text never occurs in training:

  train.txt    everything except tutorial/ and faq/   (fine-tuning data)
  heldout.txt  tutorial/ and faq/                     (held-out perplexity)

Usage: prepare_corpus.py OUT_DIR [SOURCES_DIR]
"""
import pathlib
import re
import sys

HELDOUT_DIRS = {"tutorial", "faq"}
ROLE = re.compile(r":[a-z:]+:`(?:~|!)?([^`<]*?)(?:\s*<[^>]*>)?`")
LITERAL = re.compile(r"``([^`]*)``")
UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+])\1{2,}\s*$")
DIRECTIVE = re.compile(r"^\s*\.\. ")
OPTION = re.compile(r"^\s+:[a-z-]+:")


def clean(text: str) -> str:
    lines = []
    in_directive_head = False
    for line in text.splitlines():
        if DIRECTIVE.match(line):
            in_directive_head = True
            continue
        if in_directive_head and OPTION.match(line):
            continue
        in_directive_head = False
        if UNDERLINE.match(line):
            continue
        line = ROLE.sub(r"\1", line)
        line = LITERAL.sub(r"\1", line)
        lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n\n"


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    sources = pathlib.Path(
        sys.argv[2] if len(sys.argv) > 2 else "/usr/share/doc/python3.11/html/_sources"
    )
    files = sorted(sources.rglob("*.rst.txt"))
    if not files:
        sys.exit(f"no *.rst.txt under {sources} (apt-get install python3.11-doc)")
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = [], []
    for path in files:
        top = path.relative_to(sources).parts[0]
        (heldout if top in HELDOUT_DIRS else train).append(clean(path.read_text("utf-8")))
    for name, parts in (("train.txt", train), ("heldout.txt", heldout)):
        (out / name).write_text("".join(parts), "utf-8")
        print(f"{out / name}: {len(parts)} files, {sum(map(len, parts))} characters")


if __name__ == "__main__":
    main()
