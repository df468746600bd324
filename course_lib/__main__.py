"""``python -m course_lib doctor``: check the environment the course runs in (see :mod:`course_lib.doctor`)."""
import sys

from .doctor import main

if sys.argv[1:] != ["doctor"]:
    sys.exit("usage: python -m course_lib doctor")
sys.exit(main())
