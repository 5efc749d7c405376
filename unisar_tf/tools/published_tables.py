"""Published results on the S3-Rec Amazon files, for the standard protocols' reports.

Source: K. Zhou, H. Wang, W. X. Zhao, Y. Zhu, S. Wang, F. Zhang, Z. Wang and J.-R. Wen,
"S3-Rec: Self-Supervised Learning for Sequential Recommendation with Mutual Information
Maximization", CIKM 2020; the tables of its repository's README (github.com/RUCAIBox/
CIKM2020-S3Rec, images `sample_99.PNG` and `all_rank.PNG`), read off those images. Both
protocols are rec only, leave-one-out (the last item of each user is the test item):

- "sampled": the test item against 99 negatives drawn uniformly from the items the user never
  interacted with (the paper's `data/generate_test.py`);
- "full": the test item ranked against every item, the items of the user's training
  sequence left out.

Each value: {protocol: {dataset: {model: {metric: value}}}}. The same files are in
../shared/data (amazon_beauty, amazon_sports).
"""

from __future__ import annotations

from typing import Dict

SOURCE = (
    "S3-Rec (Zhou et al., CIKM 2020), tables sample_99.PNG / all_rank.PNG of "
    "github.com/RUCAIBox/CIKM2020-S3Rec"
)

SAMPLED_METRICS = ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10")
FULL_METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")
MODELS = ("PopRec", "GRU4Rec", "SASRec", "BERT4Rec", "FDSA", "S3-Rec")


def _rows(metrics, values) -> Dict[str, Dict[str, float]]:
    return {model: dict(zip(metrics, row)) for model, row in zip(MODELS, values)}


PUBLISHED: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {
    "sampled": {
        "amazon_beauty": _rows(
            SAMPLED_METRICS,
            [
                (0.0678, 0.2105, 0.1391, 0.3386, 0.1803),
                (0.1337, 0.3125, 0.2268, 0.4106, 0.2584),
                (0.1870, 0.3741, 0.2848, 0.4696, 0.3156),
                (0.1531, 0.3640, 0.2622, 0.4739, 0.2975),
                (0.1840, 0.4010, 0.2974, 0.5096, 0.3324),
                (0.2192, 0.4502, 0.3407, 0.5506, 0.3732),
            ],
        ),
        "amazon_sports": _rows(
            SAMPLED_METRICS,
            [
                (0.0763, 0.2293, 0.1538, 0.3423, 0.1902),
                (0.1160, 0.3055, 0.2126, 0.4299, 0.2527),
                (0.1455, 0.3466, 0.2497, 0.4622, 0.2869),
                (0.1255, 0.3375, 0.2341, 0.4722, 0.2775),
                (0.1585, 0.3855, 0.2756, 0.5136, 0.3170),
                (0.1841, 0.4267, 0.3104, 0.5614, 0.3538),
            ],
        ),
    },
    "full": {
        "amazon_beauty": _rows(
            FULL_METRICS,
            [
                (0.0080, 0.0044, 0.0152, 0.0068, 0.0217, 0.0084),
                (0.0164, 0.0099, 0.0283, 0.0137, 0.0479, 0.0187),
                (0.0387, 0.0249, 0.0605, 0.0318, 0.0902, 0.0394),
                (0.0203, 0.0124, 0.0347, 0.0170, 0.0599, 0.0233),
                (0.0267, 0.0163, 0.0407, 0.0208, 0.0656, 0.0270),
                (0.0387, 0.0244, 0.0647, 0.0327, 0.0994, 0.0414),
            ],
        ),
        "amazon_sports": _rows(
            FULL_METRICS,
            [
                (0.0056, 0.0041, 0.0094, 0.0053, 0.0192, 0.0078),
                (0.0129, 0.0086, 0.0204, 0.0110, 0.0333, 0.0142),
                (0.0233, 0.0154, 0.0350, 0.0192, 0.0507, 0.0231),
                (0.0115, 0.0075, 0.0191, 0.0099, 0.0315, 0.0130),
                (0.0182, 0.0122, 0.0288, 0.0156, 0.0463, 0.0200),
                (0.0251, 0.0161, 0.0385, 0.0204, 0.0607, 0.0260),
            ],
        ),
    },
}

METRICS = {"sampled": SAMPLED_METRICS, "full": FULL_METRICS}
