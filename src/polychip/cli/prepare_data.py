"""`polychip prepare-data INPUT... --tokenizer tokenizer.json --out tokens.npy`: text files and
JSON lines into one token file for `polychip train --data` (runtime.prepare_data), with a
progress bar over the input bytes."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data",
                       help="tokenize text / JSONL files into a token file for train --data")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="text files (each one document) and .jsonl files (one JSON object "
                        "per line, each one document)")
    p.add_argument("--tokenizer", required=True, metavar="TOKENIZER.json",
                   help="a Hugging Face tokenizers file")
    p.add_argument("--out", required=True, metavar="TOKENS.npy",
                   help="the token file to write (.npy: uint16, or uint32 when the "
                        "vocabulary exceeds 65,536 tokens)")
    p.add_argument("--field", default="text",
                   help="the key of each JSON line that holds its text (default: text)")
    eos = p.add_mutually_exclusive_group()
    eos.add_argument("--eos", metavar="TOKEN",
                     help="the token put after each document (default: the tokenizer's "
                          "<|endoftext|>, <|end_of_text|>, </s> or <eos>, the first it has)")
    eos.add_argument("--no-eos", action="store_true",
                     help="put nothing between documents")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from polychip.runtime.prepare_data import check_inputs, prepare_data

    console = Console()
    total = sum(p.stat().st_size for p in check_inputs(args.inputs))
    columns = (TextColumn("tokenizing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("{task.fields[docs]:,} documents"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("tokenizing", total=total, docs=0)
        documents = 0

        def advance(num_bytes: int, num_docs: int) -> None:
            nonlocal documents
            documents += num_docs
            bar.update(task, advance=num_bytes, docs=documents)

        done = prepare_data(args.inputs, args.tokenizer, args.out, field=args.field,
                            eos=args.eos, use_eos=not args.no_eos, progress=advance)
    sep = (f"{done.eos[0]} (id {done.eos[1]}) after each document" if done.eos
           else "no separator between documents")
    console.print(f"{done.path}: {done.num_tokens:,} tokens ({done.dtype}, vocabulary "
                  f"{done.vocab_size:,}) from {done.num_documents:,} documents in "
                  f"{len(args.inputs)} file(s); {sep}")
    console.print(f"train on it: polychip train PLAN.json --data {Path(args.out)} (the plan's "
                  f"model needs vocab_size >= {done.vocab_size:,})")
    return 0
