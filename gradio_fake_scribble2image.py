from apps.builder import Task, launch

task = Task("fake_scribble", "Control Stable Diffusion with Fake Scribble Maps", annotator="fake_scribble",
            control="control_sd15_scribble.pth", prompt="a bag")

if __name__ == "__main__":
    launch(task)
