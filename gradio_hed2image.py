from apps.builder import Task, launch

task = Task("hed", "Control Stable Diffusion with HED Maps", annotator="hed",
            control=("control_sd15_hed.pth", "control_v11p_sd15_softedge.pth"), prompt="a portrait")

if __name__ == "__main__":
    launch(task)
