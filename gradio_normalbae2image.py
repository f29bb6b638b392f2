from apps.builder import Task, launch

task = Task("normalbae", "Control Stable Diffusion with Normal Maps (NormalBAE)", annotator="normalbae",
            control="control_v11p_sd15_normalbae.pth", prompt="a cute toy", toy=None)

if __name__ == "__main__":
    launch(task)
