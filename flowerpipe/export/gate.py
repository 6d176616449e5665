"""The int8 gate: is the int8 model worse than fp32 by more than export.max_accuracy_drop? Decided
from a paired comparison, photo by photo, on photos that the int8 search did not choose on, with
the rule's error rates computed from the same counts.

Only the photos on which one model is right and the other wrong carry the difference, so a drop
measured on a few hundred photos has an error of its own: a hard limit on it refuses a model that
answers like fp32 on all but a handful of photos about as often as it passes it. The rule allows
for that error, and says how often it would be wrong."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np

from flowerpipe.core.console import log
from flowerpipe.core.errors import QuantizationError
from flowerpipe.data.cache import Rows
from flowerpipe.export.quantize import WEIGHT_LIMIT, largest_int8_weight, predicted

# The gate refuses when the drop minus Z standard errors is above the allowed drop. With Z = 0.75,
# on the 1,101 photos of the flower set that the search does not see (val and test), a model that
# truly loses half the allowance is refused under 5 % of the time, and one that loses three times
# it over 95 %, while int8 gains up to 15 of them (it then disagrees with fp32 on 3.2 % of the
# photos at half the allowance); judge() states the rates for the counts at hand.
Z = 0.75
Count = int | np.ndarray  # a count of photos, or an array of counts from simulated samples
TRIALS = 20_000  # simulated samples per error rate: its own error is at most 0.4 points


@dataclass(frozen=True)
class Paired:
    """How two models' top-1 answers compare on the same photos."""

    photos: int
    lost: int  # right in fp32, wrong in int8
    gained: int  # wrong in fp32, right in int8
    agree: int  # the same class, right or wrong
    fp32_right: int

    @classmethod
    def of(cls, labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> Paired:
        """From the labels and each model's predicted classes."""
        fp32_right, int8_right = fp32 == labels, int8 == labels
        return cls(
            photos=len(labels),
            lost=int(np.count_nonzero(fp32_right & ~int8_right)),
            gained=int(np.count_nonzero(~fp32_right & int8_right)),
            agree=int(np.count_nonzero(fp32 == int8)),
            fp32_right=int(np.count_nonzero(fp32_right)),
        )

    @property
    def agreement(self) -> float:
        return self.agree / max(self.photos, 1)

    @property
    def accuracy(self) -> dict[str, float]:
        n, right = max(self.photos, 1), self.fp32_right
        return {"fp32": right / n, "int8": (right - self.lost + self.gained) / n}

    @property
    def drop_points(self) -> float:
        """int8's accuracy below fp32's, in percentage points (negative: above)."""
        return float(drop_points(self.lost, self.gained, self.photos))

    @property
    def error_points(self) -> float:
        """The standard error of `drop_points`."""
        return float(error_points(self.lost, self.gained, self.photos))

    def record(self) -> dict[str, Any]:
        return {
            "photos": self.photos,
            "accuracy": self.accuracy,
            "agreement": round(self.agreement, 5),
            "lost": self.lost,
            "gained": self.gained,
            "drop_points": round(self.drop_points, 3),
            "error_points": round(self.error_points, 3),
        }


def drop_points(lost: Count, gained: Count, photos: int) -> Count:
    """The accuracy drop, in points, of `lost` photos lost and `gained` gained out of `photos`."""
    return np.round(100 * (lost - gained) / max(photos, 1), 9)


def error_points(lost: Count, gained: Count, photos: int) -> Count:
    """The standard error of that drop: only the photos that one model gets right and the other
    wrong carry it (a paired difference)."""
    n, net = max(photos, 1), lost - gained
    return 100 * np.sqrt(np.maximum(lost + gained - net * net / n, 0.0)) / n


def _refused(lost: Count, gained: Count, photos: int, max_drop_points: float) -> Count:
    low = drop_points(lost, gained, photos) - Z * error_points(lost, gained, photos)
    return low > max_drop_points


def refuses(paired: Paired, max_drop_points: float) -> bool:
    """The gate's rule: refuse when the drop is above `max_drop_points` by more than Z standard
    errors, that is when the photos show int8 to be worse than allowed."""
    return bool(_refused(paired.lost, paired.gained, paired.photos, max_drop_points))


def refusal_rate(
    paired: Paired, true_drop_points: float, max_drop_points: float, trials: int = TRIALS, seed: int = 0
) -> float:
    """How often the rule refuses an int8 model whose drop on all photos like these is
    `true_drop_points`, judged on `paired.photos` of them: simulated, with each photo gained at the
    rate measured in `paired` and lost at that rate plus the drop."""
    n = max(paired.photos, 1)
    p_gained = paired.gained / n
    p_lost = p_gained + true_drop_points / 100
    if p_lost + p_gained > 1 or p_lost < 0:
        raise ValueError(f"a drop of {true_drop_points} points cannot be made with {paired.gained} gained")
    counts = np.random.default_rng(seed).multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], trials)
    return float(np.mean(_refused(counts[:, 0], counts[:, 1], n, max_drop_points)))


def judge(paired: Paired, max_drop_points: float) -> dict[str, Any]:
    """The gate's verdict on `paired` with its error rates: how often the rule would refuse a model
    that loses half the allowance, and one that loses three times it (1 point: 0.5 and 3), where
    such a drop can be made on these photos."""
    drops = (max_drop_points / 2, 3 * max_drop_points)
    possible = [d for d in drops if 2 * paired.gained / max(paired.photos, 1) + d / 100 <= 1]
    return paired.record() | {
        "max_accuracy_drop": max_drop_points,
        "rule": f"refused when drop_points - {Z:g} x error_points > max_accuracy_drop",
        "refused": refuses(paired, max_drop_points),
        "refusal_rate_if_true_drop": {f"{d:g}": refusal_rate(paired, d, max_drop_points) for d in possible},
    }


def gate_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    splits: Mapping[str, tuple[np.ndarray | Rows, np.ndarray]],
    *,
    max_drop_points: float,
    shown_as: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """int8 against fp32 on each of `splits` (name: crops and labels, none of them photos the search
    chose on), and the gate's verdict (`judge`) on all of them together with the largest int8
    weight; raise QuantizationError, naming `shown_as` (default `int8_path`), if the gate refuses
    the model, or if its weights could saturate on a CPU without VNNI, whichever CPU this is."""
    shown = shown_as or int8_path
    largest = largest_int8_weight(int8_path)
    if largest > WEIGHT_LIMIT:
        raise QuantizationError(
            f"{shown}: int8 weights reach {largest}, above {WEIGHT_LIMIT}: on x86 CPUs without VNNI "
            "their u8 x s8 pair sums can saturate; quantize with 7-bit weights"
        )
    paired = {
        name: Paired.of(labels, predicted(fp32_path, crops), predicted(int8_path, crops))
        for name, (crops, labels) in splits.items()
    }
    judged = Paired(*(sum(counts) for counts in zip(*(astuple(p) for p in paired.values()), strict=True)))
    verdict = judge(judged, max_drop_points)
    if verdict["refused"]:
        raise QuantizationError(
            f"{shown}: int8 is {judged.drop_points:.2f} ± {judged.error_points:.2f} points below fp32 "
            f"{judged.accuracy['fp32']:.2%} on the {judged.photos} photos the search did not see "
            f"({' + '.join(paired)}; {judged.lost} lost, {judged.gained} gained): less {Z:g} standard "
            f"errors, still above export.max_accuracy_drop {max_drop_points:g}"
        )
    agreement = ", ".join(f"{p.agreement:.1%} of the {p.photos} {name}" for name, p in paired.items())
    log.info(
        "int8 gave fp32's class on %s photos; %.2f ± %.2f points below fp32 on all %d: passed",
        agreement,
        judged.drop_points,
        judged.error_points,
        judged.photos,
    )
    return {
        "paired": {name: p.record() for name, p in paired.items()},
        "gate": verdict | {"largest_int8_weight": largest},
    }
