"""`saekit eval`: every result of a run aggregated into report.json and one scorecard.

    run.py        evaluate_run: core metrics, interpretability, steering and selection
    saebench.py   SAEBench's sparse probing and first-letter absorption, on request
    scorecard.py  the scorecard: each section's scores with 95% intervals and control margins
    compare.py    `saekit eval compare`: several dictionaries, paired differences

This layer sits above the evaluators and the uses of a dictionary: they never import it.
"""

from saekit.report.run import aggregate, evaluate_run, summary_table
from saekit.report.saebench import SAEBenchEvals

__all__ = ["SAEBenchEvals", "aggregate", "evaluate_run", "summary_table"]
