"""Print UniSAR's trainable parameter count for a preset and vocabulary sizes.

    python -m unisar_tf.tools.param_count --preset amazon --num_items 61935 --num_words 1866 \
        --num_users 68223

Vocabulary sizes count the padding id 0. The table breaks the total down by component so it
can be compared with the reference implementation's count (docs/model.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Dict, List, Optional

from unisar_tf.config import DataFacts, preset
from unisar_tf.flags import deprecated_alias
from unisar_tf.model import build_model


def parameter_breakdown(model) -> Dict[str, int]:
    """Trainable parameters per top-level component (first part of the variable path)."""
    counts: Dict[str, int] = collections.OrderedDict()
    for variable in model.trainable_variables:
        component = variable.name.split("/")[0]
        if component == model.name:  # weights owned by the model itself (q_phi)
            component = variable.name.split("/")[1].split(":")[0]
        counts[component] = counts.get(component, 0) + int(variable.shape.num_elements())
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="amazon", choices=["paper", "amazon", "kuaisar"])
    for name in ("items", "words", "users"):  # counts include the padding id 0
        parser.add_argument(f"--num_{name}", type=int, required=True)
        deprecated_alias(parser, f"--num-{name}", f"--num_{name}")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    config = preset(args.preset)
    # Spec 3's sequence lengths (30 + 30 behaviours, 50 query words); clicks hold no weights.
    data = DataFacts(
        num_items=args.num_items,
        num_words=args.num_words,
        num_users=args.num_users,
        rec_len=30,
        search_len=30,
        query_len=50,
        clicks_per_session=1,
    )
    model = build_model(config, data)
    breakdown = parameter_breakdown(model)
    width = max(len(name) for name in breakdown)
    print(
        f"UniSAR parameters, preset={args.preset}, items={args.num_items}, "
        f"words={args.num_words}, users={args.num_users}"
    )
    for name, count in breakdown.items():
        print(f"  {name:<{width}}  {count:>10,}")
    print(f"  {'total':<{width}}  {sum(breakdown.values()):>10,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
