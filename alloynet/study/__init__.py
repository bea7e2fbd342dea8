"""The study: the seed comparison of architectures x losses x imbalance ratios, against the physical limit.

from alloynet.study import load_study, run_study
results = run_study(load_study("configs/study.yaml"))   # writes docs/study/
"""

from alloynet.study.config import StudyConfig, load_study
from alloynet.study.runner import run_study

__all__ = ["StudyConfig", "load_study", "run_study"]
