from apps.builder import Task, launch

task = Task("scribble_interactive", "Control Stable Diffusion with Interactive Scribbles", annotator="scribble",
            control=("control_sd15_scribble.pth", "control_v11p_sd15_scribble.pth"), detect_resolution=None,
            canvas=True, prompt="a turtle")

if __name__ == "__main__":
    launch(task)
