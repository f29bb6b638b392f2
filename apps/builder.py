"""What a gradio_*2image.py script needs: a Task (its annotator, control files, annotator parameters as
Slider, Choice or Check, and the ModelOptions its control was trained with) and launch(). The rest lives by
job: apps/task.py (an app as data and its defaults), apps/runner.py (a request on the model), apps/widgets.py
(the controls), apps/page.py (the layout and the HTTP API), apps/launch.py (flags, model, server).
"""

from apps.launch import launch
from apps.task import Check, Choice, Slider, Task
from cldm.model import ModelOptions

__all__ = ["Check", "Choice", "ModelOptions", "Slider", "Task", "launch"]
