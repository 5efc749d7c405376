"""Renamed flags keep working under their old spelling, with a message (unisar_tf/flags.py)."""

import argparse

import pytest

from unisar_tf.flags import deprecated_alias


def _parser():
    parser = argparse.ArgumentParser(prog="job")
    parser.add_argument("--max_epochs", type=int, default=1)
    deprecated_alias(parser, "--epochs", "--max_epochs")
    return parser


def test_the_old_spelling_sets_the_new_flag_and_says_so(capsys):
    args = _parser().parse_args(["--epochs", "7"])
    assert args.max_epochs == 7  # converted by the new flag's type
    assert not hasattr(args, "epochs")
    assert (
        "job: --epochs is deprecated and will be removed; use --max_epochs"
        in capsys.readouterr().err
    )


def test_the_new_spelling_is_silent_and_the_old_one_is_hidden_from_help(capsys):
    parser = _parser()
    assert parser.parse_args(["--max_epochs", "3"]).max_epochs == 3
    assert parser.parse_args([]).max_epochs == 1
    assert capsys.readouterr().err == ""
    assert "--epochs" not in parser.format_help()


def test_an_alias_of_a_flag_that_does_not_exist_is_a_programming_error():
    with pytest.raises(ValueError, match="--max_steps must be added before"):
        deprecated_alias(argparse.ArgumentParser(), "--steps", "--max_steps")


def test_a_required_flag_is_satisfied_by_either_spelling_and_missing_by_neither(capsys):
    parser = argparse.ArgumentParser(prog="job")
    parser.add_argument("--num_items", type=int, required=True)
    deprecated_alias(parser, "--num-items", "--num_items")
    assert parser.parse_args(["--num-items", "5"]).num_items == 5
    assert parser.parse_args(["--num_items", "6"]).num_items == 6
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "--num_items is required" in capsys.readouterr().err
