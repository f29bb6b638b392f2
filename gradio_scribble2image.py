from apps.builder import Task, launch

task = Task("scribble", "Control Stable Diffusion with Scribble Maps", annotator="scribble",
            control=("control_sd15_scribble.pth", "control_v11p_sd15_scribble.pth"), detect_resolution=None,
            prompt="a turtle")

if __name__ == "__main__":
    launch(task)
