"""What a gradio_*2image.py script needs: a Task (its annotator, control files and annotator parameters as
Slider, Choice or Check) and launch(). The rest lives by job: apps/task.py (an app as data and its defaults),
apps/runner.py (a request on the model), apps/widgets.py (the controls), apps/page.py (the layout and the
HTTP API), apps/launch.py (flags, model, server).
"""

from apps.launch import launch
from apps.task import Check, Choice, Slider, Task

__all__ = ["Check", "Choice", "Slider", "Task", "launch"]
