# nbgrader configuration of the course: read by `python -m grader` (and by nbgrader's own CLI or formgrader
# when run from a course folder that `python -m grader` prepared, which copies this file there).
c = get_config()  # noqa: F821  (provided by traitlets when the file is loaded)

c.CourseDirectory.course_id = "fine-tuning-llms"
# One assignment per notebook: source/<name>/<name>.ipynb, submitted/<student>/<name>/<name>.ipynb.
c.CourseDirectory.notebook_id = "*"

# Notebooks fine-tune a real model on CPU: one cell may train for a few minutes. The same limit as the course's
# grader (grader.sandbox.Limits.cell_timeout_s; tests/test_grader.py checks that the two agree).
c.Execute.timeout = 600
c.Execute.kernel_name = "python3"

# A submission that deleted a test cell gets the instructor's copy back instead of "needs manual grade".
c.OverwriteCells.add_missing_cells = True
