"""The half of grading that runs in the learner's kernel (the grader's, not a course concept).

- :mod:`.checks`: the comparisons visible and hidden tests call (``check``, ``assert_tensors_close``,
  ``assert_number_close``), whose failures say what differs, and ``Scale``, a stand-in module tests pass in.
- :mod:`.wire`: plain-data calls into the sandboxed kernel and back (never pickle); ``grader.kernel`` and
  ``grader.verdicts`` are its other end.
"""
from .checks import GradingError, Scale, assert_number_close, assert_tensors_close, check

__all__ = ["GradingError", "Scale", "assert_number_close", "assert_tensors_close", "check"]
