from apps.builder import Task, launch

# the condition is the picture with the painted pixels at -1; what is not painted is kept
task = Task("inpaint", "Inpaint with Stable Diffusion and ControlNet", annotator=None,
            control="control_v11p_sd15_inpaint.pth", detect_resolution=None, workflow="inpaint", toy="plain",
            prompt="a red ball")

if __name__ == "__main__":
    launch(task)
