"""`polychip launch` forwards the training options that differ from their defaults to every
node's `polychip train`, under their own flag names."""

from __future__ import annotations

import argparse

from polychip.cli.launch import train_args
from polychip.cli.train import add_train_options


def test_optimizer_schedule_clipping_and_tokenizer_options_reach_the_workers() -> None:
    parser = argparse.ArgumentParser()
    add_train_options(parser)
    defaults = vars(parser.parse_args([]))
    given = ["--weight-decay", "0.05", "--lr-schedule", "cosine", "--warmup-steps", "10",
             "--min-lr", "0.0001", "--lr-decay-steps", "500", "--clip-grad-norm", "1.0",
             "--tokenizer", "tok.json", "--steps", "7"]
    forwarded = train_args(parser.parse_args(given), defaults)
    assert sorted(zip(forwarded[::2], forwarded[1::2], strict=True)) == sorted(
        zip(given[::2], given[1::2], strict=True))
    # what a worker parses back is what was asked
    assert vars(parser.parse_args(forwarded)) == vars(parser.parse_args(given))
    assert train_args(parser.parse_args([]), defaults) == []
