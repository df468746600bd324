"""course_lib: the code behind the course *Fine-tuning LLMs*.

One module per concept: ``models`` (the embedded SmolLM2 model), ``lora`` (LoRA layers, injection, PEFT
files), ``data`` (the support-ticket data set), ``classify`` (fine-tuning and scoring a classifier),
``memory`` (memory estimates), ``grading`` (comparisons with helpful failure messages), ``widgets`` and
``plots``.
"""
__version__ = "0.1.0"
