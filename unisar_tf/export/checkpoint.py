"""Reading a run's checkpoint for export: a damaged file is named, not an IndexError.

A checkpoint `<prefix>` is `<prefix>.index` (which tensor is where, with checksums) and
`<prefix>.data-NNNNN-of-MMMMM` (the tensors). Restoring one whose data file was cut short
raised `IndexError: Read less bytes than requested` (issue 23), a damaged index "not an
sstable", flipped bytes a checksum DataLossError, none saying which file. `check_checkpoint`
reads every tensor first and raises DamagedCheckpointError naming the file.
"""

from __future__ import annotations

import os
from typing import List

import tensorflow as tf


class DamagedCheckpointError(ValueError):
    """A checkpoint's files cannot be read back: truncated, corrupted or missing."""


def checkpoint_files(prefix: str) -> List[str]:
    """The index and the data files of a checkpoint prefix that exist."""
    return sorted([f"{prefix}.index"] + tf.io.gfile.glob(f"{prefix}.data-*"))


def _damaged(prefix: str, where: str, error: BaseException) -> DamagedCheckpointError:
    reason = getattr(error, "message", None) or str(error) or type(error).__name__
    return DamagedCheckpointError(
        f"the checkpoint {prefix} is damaged: {where} cannot be read back ({reason.strip()}). "
        "It was cut short, overwritten or only partly copied; restore the file from a "
        "backup or train the run again (the last epochs' checkpoints are under "
        f"{os.path.join(os.path.dirname(os.path.dirname(prefix)), 'checkpoints')})"
    )


def check_checkpoint(prefix: str) -> None:
    """Read every tensor of the checkpoint at `prefix`; DamagedCheckpointError naming the
    file that is missing, truncated or corrupted."""
    index = f"{prefix}.index"
    if not tf.io.gfile.exists(index):
        raise _damaged(prefix, f"{index} is missing, so it", FileNotFoundError("no such file"))
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
    except (tf.errors.OpError, IndexError, ValueError) as e:
        raise _damaged(prefix, f"its index {index}", e) from e
    data = [path for path in checkpoint_files(prefix) if path != index]
    where = (
        f"its data file {data[0]}"
        if len(data) == 1
        else f"one of its data files ({', '.join(data) or 'none found'})"
    )
    for name in names:
        try:
            reader.get_tensor(name)
        except (tf.errors.OpError, IndexError, ValueError) as e:
            raise _damaged(prefix, f"{where} (tensor {name})", e) from e
