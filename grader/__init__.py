"""The instructor side of the course: nbgrader configuration and commands (``python -m grader --help``)."""
