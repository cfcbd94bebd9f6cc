"""Evaluation: clean accuracy and each configured item's metrics on a fixed subset.

One module per item kind, registered by name (`{kind: ...}` in a spec): attack (the project's
PGD, FGSM, FGM: cheap, for search and ASHA), autoattack and min_norm (adv-lib's attacks and
Square: the final, strong robust accuracy), noise, deepfool, certified, certificate_check,
lipschitz_estimate, fit. Metric names: `clean_acc`; `{attack}_eps{eps}_acc` per eps (e.g.
`pgd_l2_eps0.5_acc`, `autoattack_linf_eps0.03137_acc`); `robust_acc` repeats the study's
primary robust metric. An example counts as robust only when it is classified correctly both
clean and under the attack, and an adversarial example counts only after `verified`.
"""

from trainables.core.evaluation import (  # noqa: F401  (register the item kinds)
    attack,
    autoattack,
    certificate_check,
    certified,
    deepfool,
    fit,
    lipschitz_estimate,
    min_norm,
    noise,
)
from trainables.core.evaluation.attack import AttackEval
from trainables.core.evaluation.autoattack import AutoAttackEval
from trainables.core.evaluation.base import (
    EVALUATIONS,
    EXAMPLES,
    FINAL_EXAMPLES,
    correct_predictions,
    curve_area,
    metric_name,
    verified,
)
from trainables.core.evaluation.certificate_check import CertificateCheckEval
from trainables.core.evaluation.certified import CertifiedEval
from trainables.core.evaluation.config import EvalConfig, EvalItem, EvalResult, evaluate, run_evaluation
from trainables.core.evaluation.deepfool import DeepFoolEval
from trainables.core.evaluation.fit import FitEval
from trainables.core.evaluation.indicators import metric_warnings
from trainables.core.evaluation.lipschitz_estimate import LipschitzEstimateEval
from trainables.core.evaluation.min_norm import MinNormEval
from trainables.core.evaluation.noise import NoiseEval

__all__ = [
    "EVALUATIONS", "EXAMPLES", "FINAL_EXAMPLES",
    "AttackEval", "AutoAttackEval", "CertificateCheckEval", "CertifiedEval", "DeepFoolEval",
    "EvalConfig", "EvalItem", "EvalResult", "FitEval", "LipschitzEstimateEval", "MinNormEval", "NoiseEval",
    "correct_predictions", "curve_area", "evaluate", "metric_name", "metric_warnings", "run_evaluation",
    "verified",
]
